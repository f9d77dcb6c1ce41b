"""What ``trainer.precision: fastest`` buys on this CPU: the demo's training step in the precision
it resolves to, against fp32, same run (``python -m benchmarks.cpu_precision``).

The loop is :func:`benchmarks.train_throughput.plain_rate` (our module's network, weighted BCE
and optimiser on tensor batches) at the demo's crop size and batch. On a CPU with AVX512_BF16 or
AMX the chosen precision is bf16 + channels_last and the ratio should be above 1; elsewhere it
is fp32 and the ratio is 1 by construction (bf16 emulated there is slower: ``--force-bf16``
measures it).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.train_throughput import plain_rate, tensor_batches
from hipdisloc.precision import cpu_flags, resolve_channels_last, resolve_precision


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="crop px (experiment=demo: 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--force-bf16", action="store_true",
                        help="bf16 + channels_last even where the CPU has no bf16")
    a = parser.parse_args(argv)
    cpu = torch.device("cpu")
    precision = "bf16-mixed" if a.force_bf16 else \
        resolve_precision({"accelerator": "cpu", "precision": "fastest"})["precision"]
    bf16 = precision.startswith("bf16")
    channels_last = resolve_channels_last("auto", precision)

    def rate(use_bf16: bool, nhwc: bool) -> float:
        loader = tensor_batches(a.warmup + a.steps, a.batch_size, a.size, cpu)
        return plain_rate(loader, a.steps, a.warmup, "all", cpu, use_bf16, nhwc)

    fp32 = rate(False, False)
    chosen = rate(bf16, channels_last) if bf16 else fp32
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}) or ["none"]
    print(f"cpu_precision: ResNet18 training step, {a.size} px, batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads; native bf16 flags: {', '.join(native)}\n"
          f"  fp32 {fp32:.0f} img/s; 'fastest' -> {precision}"
          f"{' + channels_last' if channels_last else ''} {chosen:.0f} img/s; "
          f"ratio {chosen / fp32:.2f}")
    return {"precision": precision, "fp32": fp32, "chosen": chosen, "ratio": chosen / fp32}


if __name__ == "__main__":
    main()
