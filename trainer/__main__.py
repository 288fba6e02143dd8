"""``python -m rlkeel.trainer`` (and ``torchrun --nproc_per_node N -m rlkeel.trainer``)."""

from rlkeel.trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
