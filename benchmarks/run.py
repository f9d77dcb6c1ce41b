"""Run every benchmark; each prints a ratio against a baseline measured in the same run.

    make bench      (or: .venv/bin/python -m benchmarks.run)
"""

from __future__ import annotations

import platform
from datetime import date

from benchmarks import phantom_speed, prepare_throughput


def main() -> None:
    print(f"hipdisloc benchmarks, {date.today()}, {platform.machine()}, "
          f"{platform.processor() or 'cpu'}")
    phantom_speed.main([])
    prepare_throughput.main([])


if __name__ == "__main__":
    main()
