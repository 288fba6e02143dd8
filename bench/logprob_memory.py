"""Peak memory of per-token log-probs: naive ``log_softmax(lm_head(h)).gather`` vs the chunked,
checkpointed ``token_log_probs``, forward + backward, at a few (B, T, V).

    python bench/logprob_memory.py [--device cpu|cuda] [--chunk 1024]

On CUDA the peak is ``torch.cuda.max_memory_allocated`` above the inputs. On CPU it is the
running peak of the allocator events that ``torch.profiler`` records with ``profile_memory``;
the bytes saved for backward are counted with ``saved_tensors_hooks`` on both devices.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from torch import nn

from rlkeel.trainer.models import token_log_probs

SHAPES = [(4, 512, 32_000), (8, 1024, 32_000), (4, 1024, 151_936)]
HIDDEN = 256


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}")  # fmt: skip


def naive(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(head(hidden).float(), -1)
    return logp.gather(-1, targets[..., None]).squeeze(-1)


def chunked(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    return token_log_probs(head, hidden, targets, chunk_size=chunk)[0]


def measure(fn, head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,  # type: ignore[no-untyped-def]
            device: torch.device) -> tuple[float, float]:  # fmt: skip
    """(peak MiB during forward+backward, MiB saved for backward)."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    def run() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(head, hidden, targets)
        out.sum().backward()
        head.zero_grad(set_to_none=True)
        hidden.grad = None

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        # Raw allocator events (+bytes on alloc, -bytes on free) in time order.
        events = sorted((e for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]"), key=lambda e: e.start_ns())  # fmt: skip
        running = peak = 0
        for e in events:
            running += e.nbytes()
            peak = max(peak, running)
    return peak / 2**20, saved / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="only the first shape")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"machine: {machine(device)}; hidden {HIDDEN}, head dtype {dtype}, chunk {args.chunk}")
    print(f"{'B':>3} {'T':>5} {'V':>7} | {'naive peak':>11} {'chunked peak':>13} {'ratio':>6} | "
          f"{'naive saved':>12} {'chunked saved':>14}  (MiB)")  # fmt: skip
    for b, t, v in SHAPES[:1] if args.small else SHAPES:
        torch.manual_seed(0)
        head = nn.Linear(HIDDEN, v, bias=False).to(device, dtype)
        hidden = torch.randn(b, t, HIDDEN, device=device, dtype=dtype, requires_grad=True)
        targets = torch.randint(0, v, (b, t), device=device)
        n_peak, n_saved = measure(naive, head, hidden, targets, device)
        c_peak, c_saved = measure(lambda h, x, y: chunked(h, x, y, args.chunk), head, hidden,
                                  targets, device)  # fmt: skip
        print(f"{b:>3} {t:>5} {v:>7} | {n_peak:>11.1f} {c_peak:>13.1f} {n_peak / c_peak:>6.1f} | "
              f"{n_saved:>12.1f} {c_saved:>14.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
