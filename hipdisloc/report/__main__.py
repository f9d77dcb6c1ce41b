"""``python -m hipdisloc.report SWEEP_DIR``: Tables 2 and 3 of a sweep (from its folds'
``test_metrics.json``), written to the sweep folder and printed."""

from __future__ import annotations

import argparse
import sys

from hipdisloc.sweep import aggregate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hipdisloc.report", description=__doc__)
    parser.add_argument("sweep_dir", help="the sweep folder (holds fold0/, fold1/, ...)")
    args = parser.parse_args(argv)
    try:
        tables = aggregate(args.sweep_dir)
    except FileNotFoundError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print((tables.folder / "table2.md").read_text())
    print((tables.folder / "table3.md").read_text())
    if tables.missing:
        print(f"report: folds without results: {', '.join(tables.missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
