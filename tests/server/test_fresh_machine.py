"""`rlkeel` works on a fresh machine: no data directory, no configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_default_sqlite_store_is_created_on_first_use(tmp_path: Path) -> None:
    home = tmp_path / "home"  # a user who never ran rlkeel: no ~/.local/share/rlkeel
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLKEEL_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"))
    out = subprocess.run([sys.executable, "-m", "rlkeel.cli.main", "keys", "create", "--role",
                          "admin"], env=env, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("rlk_")
    assert (home / ".local" / "share" / "rlkeel" / "rlkeel.sqlite").is_file()
