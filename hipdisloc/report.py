"""``python -m hipdisloc.report SWEEP_DIR``: the sweep's report. Tables 2 and 3 (from the folds'
``test_metrics.json``), then ``report/report.html`` (self-contained) and ``report/report.md``
with figures, pooled metrics with confidence intervals, calibration, decision curve, operating
points and saliency; ``calibration.json`` for ``predict``. ``--tables-only`` stops after the
tables. ``--compare``: SWEEP_DIR holds a folder per configuration (a sweep of settings), and
``compare.md`` is written again (:mod:`hipdisloc.stages.report.compare`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hipdisloc.config import ReportSettings
from hipdisloc.stages.report.aggregate import aggregate

DEFAULTS = ReportSettings()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hipdisloc.report", description=__doc__)
    parser.add_argument("sweep_dir", help="the sweep folder (holds fold0/, fold1/, ...)")
    parser.add_argument("--tables-only", action="store_true", help="Tables 2 and 3 only")
    parser.add_argument("--no-saliency", action="store_true", help="skip the saliency maps")
    parser.add_argument("--n-boot", type=int, default=DEFAULTS.n_boot,
                        help=f"bootstrap resamples ({DEFAULTS.n_boot})")
    parser.add_argument("--prevalence", type=float, default=None,
                        help="real share of positive images to recalibrate to (default: the "
                             "share among the sweep's images)")
    parser.add_argument("--target-sensitivity", type=float, nargs="+",
                        default=DEFAULTS.target_sensitivities,
                        help="operating points to report (default "
                             f"{' '.join(map(str, DEFAULTS.target_sensitivities))})")
    parser.add_argument("--data-dir", default=None,
                        help="where the upstream stages are, when the sweep moved")
    parser.add_argument("--compare", action="store_true",
                        help="compare the configuration folders under SWEEP_DIR (compare.md)")
    parser.add_argument("--baseline", default=None,
                        help="with --compare: the baseline configuration's folder name")
    args = parser.parse_args(argv)
    if args.compare:
        return compare_configurations(args.sweep_dir, args.baseline, args.n_boot)
    try:
        tables = aggregate(args.sweep_dir)
    except FileNotFoundError as err:
        configurations = sorted({p.parent.parent for p in
                                 Path(args.sweep_dir).glob("*/fold*/test_metrics.json")})
        hint = (f" (it holds configurations: give one of their folders, e.g. "
                f"{configurations[0]}, or --compare)" if configurations else "")
        print(f"report: {err}{hint}", file=sys.stderr)
        return 2
    print((tables.folder / "table2.md").read_text())
    print((tables.folder / "table3.md").read_text())
    if tables.missing:
        print(f"report: folds without results: {', '.join(tables.missing)}", file=sys.stderr)
    if args.tables_only:
        return 0
    from hipdisloc.stages.report.build import build_report

    files = build_report(args.sweep_dir, ReportSettings(
        n_boot=args.n_boot, target_sensitivities=list(args.target_sensitivity),
        prevalence=args.prevalence, saliency=not args.no_saliency, data_dir=args.data_dir))
    print(f"report -> {files.html}\n          {files.markdown}")
    if files.brier_raw is not None:
        print(f"  Brier score: raw {files.brier_raw:.4f}, recalibrated "
              f"{files.brier_recalibrated:.4f}")
    if not files.saliency_sanity.empty:
        print("  saliency inside the implant (share / area share = enrichment): "
              + ", ".join(f"{r.method} {r.share_in_implant:.2f} / {r.implant_area_share:.2f} = "
                          f"{r.enrichment:.2f}" for r in files.saliency_sanity.itertuples()))
    return 0


def compare_configurations(sweep_dir: str, baseline: str | None, n_boot: int) -> int:
    from hipdisloc.stages.report.compare import load_configuration, write_comparison

    folders = sorted(p for p in Path(sweep_dir).iterdir()
                     if p.is_dir() and any(p.glob("fold*/validation_predictions.csv")))
    try:
        write_comparison(Path(sweep_dir), [load_configuration(p) for p in folders], baseline,
                         n_boot)
    except ValueError as err:
        print(f"report: {sweep_dir}: {err}", file=sys.stderr)
        return 2
    print((Path(sweep_dir) / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
