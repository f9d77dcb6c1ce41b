"""Run every benchmark; each prints a ratio against a baseline measured in the same run.

    make bench      (or: .venv/bin/python -m benchmarks.run [--only NAME ...])

benchmark            measured                           baseline (same run)       target
phantom_speed        phantom generation, images/s       DICOM writing alone       (projection)
prepare_throughput   prepare stage, images/s            pydicom decoding alone    ratio >= 0.8
train_throughput     Lightning + our DataModule and     a plain loop, same module ratio >= 0.97
                     module, images/s                   and batches
step_overhead        Lightning's fixed cost per step,   a plain loop, same        (ms/step, ratio)
                     tiny model, training.py's Trainer  optimiser and schedule
data_pipeline        CropDataset + DataLoader,          albumentations flip +     >= 2,000/s
                     samples/s per worker process       rotate alone              per worker
scale                folds, oversampled index, cache    reading the manifest      seconds, < 2 GB
                     index at 92,584 images
predict_latency      one radiograph, DICOM in -> risk   the bare fold-ensemble    (ratio)
                     out, p50/p95; batch throughput     forward, same run
cpu_precision        the demo's training step in the    the same step in fp32     (ratio; > 1
                     precision 'fastest' resolves to                              with bf16)

Not run here, as it needs a trained sweep: ``python -m benchmarks.precision_scores --sweep DIR``
(what bf16 autocast, channels_last and torch.compile do to the test scores, against fp32).

Each module also runs alone (``python -m benchmarks.<name> --help``). On a CUDA machine,
``bash benchmarks/gpu.sh OUT_DIR`` measures the training and data rates at paper settings and
projects the 10-fold study's wall time (``--dry-run`` runs it on the CPU in about a minute).
"""

from __future__ import annotations

import argparse
import platform
from datetime import date

from benchmarks import (
    cpu_precision,
    data_pipeline,
    phantom_speed,
    predict_latency,
    prepare_throughput,
    scale,
    step_overhead,
    train_throughput,
)

BENCHMARKS = {"phantom_speed": phantom_speed, "prepare_throughput": prepare_throughput,
              "train_throughput": train_throughput, "step_overhead": step_overhead,
              "data_pipeline": data_pipeline,
              "scale": scale, "predict_latency": predict_latency,
              "cpu_precision": cpu_precision}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    args = parser.parse_args(argv)
    print(f"hipdisloc benchmarks, {date.today()}, {platform.machine()}, "
          f"{platform.processor() or 'cpu'}")
    for name, module in BENCHMARKS.items():
        if args.only is None or name in args.only:
            module.main([])


if __name__ == "__main__":
    main()
