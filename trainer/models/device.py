"""Runtime device choice: CUDA when available (with bf16 autocast), CPU everywhere else."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs in float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
