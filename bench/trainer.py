"""Trainer throughput: step time and response tokens/s per algorithm.

CPU: the built-in model (random init, so every response runs to ``--max-new-tokens`` and the
figures compare like with like). With CUDA: the same with a ~0.5B Hugging Face model
(Qwen2-0.5B's shape) built from its config, bf16 autocast (nothing is downloaded; needs
``transformers``).

    python bench/trainer.py                     # CPU, all algorithms
    python bench/trainer.py --steps 5 --algorithms grpo gspo
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

import torch

from rlkeel.trainer.config import TrainConfig
from rlkeel.trainer.loop import Trainer
from rlkeel.trainer.models import CharTokenizer, build_model

ALGORITHMS = ("ppo", "grpo", "dapo", "gspo", "gspo_token", "dr_grpo", "cispo")

# Qwen2-0.5B's shape (494M parameters with the tied 151,936-token embedding).
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151_936,
                 max_position_embeddings=4096, tie_word_embeddings=True)  # fmt: skip


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{mem}{gpu}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")  # fmt: skip


def bench_one(algorithm: str, model: torch.nn.Module, device: str, args: argparse.Namespace,
              ) -> dict[str, Any]:  # fmt: skip
    config = TrainConfig(algorithm=algorithm, task="addition", warm_start=False,
                         steps=args.warmup + args.steps, group_size=args.group_size,
                         prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
                         dynamic_sampling=False, overlong_filter=False, lr=1e-5,
                         device=device)  # fmt: skip
    trainer = Trainer(config, model=model, device=device)
    times, tokens = [], []
    for i in range(args.warmup + args.steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        metrics = trainer.train_step()
        if i >= args.warmup:
            times.append(metrics["step_time_s"])
            tokens.append(metrics["tokens_per_s"] * metrics["step_time_s"])
    return {"algorithm": algorithm, "step_s": statistics.median(times),
            "tokens_per_s": sum(tokens) / sum(times)}


def run(device: str, model_factory: Any, label: str, args: argparse.Namespace) -> None:
    print(f"\n{label} on {device}: {args.prompts} prompts x {args.group_size} samples, "
          f"{args.max_new_tokens} new tokens, median of {args.steps} steps after {args.warmup}")
    print(f"{'algorithm':<11} {'step (s)':>9} {'tokens/s':>10}")
    for algorithm in args.algorithms:
        torch.manual_seed(0)
        row = bench_one(algorithm, model_factory(), device, args)
        print(f"{row['algorithm']:<11} {row['step_s']:>9.3f} {row['tokens_per_s']:>10.0f}")
        if device.startswith("cuda"):
            print(f"{'':<11} peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--model", default="builtin-tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--cuda-prompts", type=int, default=16)
    parser.add_argument("--cuda-max-new-tokens", type=int, default=128)
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tokenizer = CharTokenizer()
    run("cpu", lambda: build_model(args.model, tokenizer), args.model, args)
    if torch.cuda.is_available() and not args.no_cuda:
        try:
            from transformers import Qwen2Config
        except ImportError:
            print("\nCUDA found but transformers is not installed: no Hugging Face figures")
            return
        config = Qwen2Config(**QWEN2_05B)
        model = build_model("hf:", tokenizer, config=config)
        n = sum(p.numel() for p in model.parameters())
        args.prompts, args.max_new_tokens = args.cuda_prompts, args.cuda_max_new_tokens
        run("cuda", lambda: build_model("hf:", tokenizer, config=config),
            f"HF Qwen2 shape ({n / 1e6:.0f}M params), bf16 autocast", args)


if __name__ == "__main__":
    main()
