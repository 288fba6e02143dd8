"""The README's verification snippet runs as written and accepts exactly what the server signs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rlkeel.server.webhooks import signing

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Alert webhooks") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


def test_readme_verification_snippet_accepts_signed_and_refuses_tampered() -> None:
    secret = signing.new_secret()
    code = _snippet()
    assert '"whsec_..."' in code
    namespace: dict[str, Any] = {}
    exec(code.replace('"whsec_..."', repr(secret)), namespace)  # noqa: S102
    receive = namespace["receive"]
    body = json.dumps({"type": "finding.raised", "data": {"severity": "high"}}).encode()
    headers = signing.headers([signing.new_secret(), secret], message_id="msg_1",
                              timestamp=int(time.time()), body=body)  # fmt: skip
    assert receive(body, headers) == {"type": "finding.raised", "data": {"severity": "high"}}
    assert receive(body.replace(b"high", b"info"), headers) is None
    stale = signing.headers([secret], message_id="msg_1", timestamp=int(time.time()) - 600,
                            body=body)  # fmt: skip
    assert receive(body, stale) is None
