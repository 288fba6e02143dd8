"""A non-editable install from a built wheel carries the migrations and the CLI works."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(out), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (path,) = out.glob("rlkeel-*.whl")
    return path


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("rlkeel/client/schemas.py", "rlkeel/client/py.typed", "rlkeel/server/app.py",
                   "rlkeel/trainer/__init__.py", "rlkeel/migrations/env.py",
                   "rlkeel/migrations/script.py.mako", "rlkeel/cli/main.py"):  # fmt: skip
        assert needed in names, needed
    assert any(n.startswith("rlkeel/migrations/versions/0001") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_installed_wheel_migrates_a_database(wheel: Path, tmp_path: Path, fresh_pg_database) -> None:  # type: ignore[no-untyped-def]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Dependencies come from this environment's site-packages; the package itself only from the wheel.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "RLKEEL_DATABASE_URL": fresh_pg_database.url,
           "PYTHONPATH": site, "HOME": str(tmp_path)}  # fmt: skip
    check = subprocess.run([str(py), "-c", "import rlkeel.server, sys; print(rlkeel.server.__file__)"],
                           env=env, capture_output=True, text=True, check=True, cwd=tmp_path)  # fmt: skip
    assert str(venv) in check.stdout, "rlkeel must come from the installed wheel, not the source tree"
    subprocess.run([str(venv / "bin" / "rlkeel"), "db", "upgrade"], env=env, check=True, cwd=tmp_path)
    current = subprocess.run([str(venv / "bin" / "rlkeel"), "db", "current"], env=env, check=True,
                             capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert "current: 0001" in current.stdout or "current: " in current.stdout
    head = current.stdout.split("head: ")[1].strip()
    assert current.stdout.startswith(f"current: {head} ")
    os.environ.get("CI")  # the test runs in CI too: nothing is skipped
