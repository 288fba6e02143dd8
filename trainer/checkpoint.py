"""Checkpoints: one file per step (``step-000012.pt``), written atomically (tmp + rename).

A checkpoint holds everything a continuation needs to be identical to the run that never
stopped: model, value head, optimizer, scheduler, RNG states (python, torch, the prompt stream
and the sampling generator), step, the algorithm in force and the full config.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step-(\d{6,})\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:06d}.pt"


def rng_state(prompt_rng: random.Random, generator: torch.Generator | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "prompt": prompt_rng.getstate(),
        "generator": None if generator is None else generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], prompt_rng: random.Random,
                      generator: torch.Generator | None) -> None:  # fmt: skip
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    prompt_rng.setstate(state["prompt"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` for ``step`` atomically and return its path. A crash mid-write leaves
    a ``.tmp`` file that ``list_checkpoints`` ignores, never a truncated checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save({**state, "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only=False: RNG states are python tuples; these are the run's own files.
    return torch.load(path, map_location=map_location, weights_only=False)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_at_or_before(directory: str | Path, step: int) -> tuple[int, Path] | None:
    """The newest checkpoint whose step is ≤ ``step``, or None."""
    candidates = [c for c in list_checkpoints(directory) if c[0] <= step]
    return candidates[-1] if candidates else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
