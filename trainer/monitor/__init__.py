"""The trainer's side of the closed loop: a link to the service with fail-open behaviour.

``ServiceLink`` (link.py) registers the run and is the loop's three hooks; ``ReportSender``
(sender.py) delivers reports and acks in order from a background thread; ``Spool`` (spool.py)
keeps them on disk, bounded, while the service is away; ``local_verdict`` (guards.py) decides
a rollout when no verdict comes in time.
"""

from rlkeel.trainer.monitor.guards import guard_reasons, local_verdict
from rlkeel.trainer.monitor.link import ServiceLink
from rlkeel.trainer.monitor.sender import PermanentError, ReportSender, TransientError
from rlkeel.trainer.monitor.spool import Spool

__all__ = [
    "PermanentError",
    "ReportSender",
    "ServiceLink",
    "Spool",
    "TransientError",
    "guard_reasons",
    "local_verdict",
]
