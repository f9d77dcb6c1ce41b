"""What a user reads while a study runs: one line per stage, a few per fold, a closing headline.

    stage phantom: 2,574 images in 1 min 12 s
    stage detect: reused data/demo/detector (0 s)
    fold 3 (4/10) [###-------] epoch 1/3, val AUC 0.684, 16 s; study ETA 5 min 10 s
    fold 3 (4/10): test AUC 0.712 (oracle 0.790), 48 s; study ETA 4 min 48 s
    report: 22 s -> outputs/demo/report/report.html
    Study done in 11 min 02 s: mean test AUC 0.712 ± 0.064 (oracle 0.805 ± 0.030, gap 0.093)
    over 10 folds (phantom: synthetic, not clinical); report -> outputs/demo/report/report.html

The formatting is pure (durations, counts, the lines, the ETA, the headline). :func:`say`
prints a line on global rank 0 only, whole (no carriage returns: a log file reads like the
terminal). The study's ETA needs the folds to run one after another in this process (Hydra's
basic launcher): :func:`start_study` is then called at the sweep's start (its Hydra
callback) and each fold reads the :class:`StudyClock` from :func:`current_study`; with parallel
launchers there is none, and the folds print their own lines without an ETA.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PHANTOM_NOTE = "(phantom: synthetic, not clinical)"
EPOCH_LINES = 4           # per fold, at most one epoch line per quarter of its epochs ...
QUIET_LIMIT_S = 300.0     # ... and one at least every 5 minutes when epochs are long


def format_duration(seconds: float) -> str:
    """``41 s``, ``11 min 02 s``, ``2 h 05 min`` (rounded to whole seconds)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def count(n: int, noun: str) -> str:
    """``2,574 images``, ``1 image``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def stage_line(name: str, seconds: float, what: str | None = None,
               reused: str | None = None) -> str:
    """``stage prepare: 2,574 images in 41 s``; ``stage detect: reused DIR (0 s)``."""
    if reused is not None:
        return f"stage {name}: reused {reused} ({format_duration(seconds)})"
    return f"stage {name}: {what or 'done'} in {format_duration(seconds)}"


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def eta(finished: Sequence[float], folds_left: int, running: float = 0.0) -> float | None:
    """Seconds left in the study: the mean time of the folds finished so far times the folds
    left (the running one included), less what the running fold has taken already. None
    before any fold has finished."""
    if not finished:
        return None
    return max(0.0, mean(finished) * folds_left - running)


def eta_text(seconds: float | None) -> str:
    return "study ETA estimating" if seconds is None else \
        f"study ETA {format_duration(seconds)}"


def _auc(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def fold_label(fold: int, position: int | None = None, total: int | None = None) -> str:
    """``fold 3 (4/10)``: fold 3, the 4th job of 10; ``fold 3`` outside a sequential sweep."""
    return f"fold {fold}" + (f" ({position}/{total})" if position and total else "")


def bar(done: int, total: int, width: int = 10) -> str:
    """``[###-------]``: ASCII, so that any terminal or log file shows it."""
    filled = 0 if total <= 0 else min(width, int(round(width * done / total)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def epoch_line(label: str, epoch: int, epochs: int, seconds: float,
               val_auc: float | None = None, study: str | None = None) -> str:
    """``fold 3 (4/10) [###-------] epoch 1/3, val AUC 0.684, 16 s; study ETA 5 min 10 s``."""
    line = f"{label} {bar(epoch, epochs)} epoch {epoch}/{epochs}"
    if val_auc is not None:
        line += f", val AUC {_auc(val_auc)}"
    line += f", {format_duration(seconds)}"
    return line + (f"; {study}" if study else "")


def epoch_due(epoch: int, epochs: int, parts: int = EPOCH_LINES) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``epochs`` starts a new part of the fold (a quarter
    by default): a few lines per fold however many epochs. Never the last epoch: the fold's
    own line follows it."""
    if not 1 <= epoch < epochs:
        return False
    return parts * epoch // epochs > parts * (epoch - 1) // epochs


def fold_line(label: str, auc: float | None, seconds: float, oracle: float | None = None,
              study: str | None = None) -> str:
    """``fold 3 (4/10): test AUC 0.712 (oracle 0.790), 48 s; study ETA 4 min 48 s``."""
    line = f"{label}: test AUC {_auc(auc)}"
    if oracle is not None:
        line += f" (oracle {_auc(oracle)})"
    line += f", {format_duration(seconds)}"
    return line + (f"; {study}" if study else "")


def comparison_line(seconds: float, n: int, chosen: str, test_auc: float | None, path) -> str:
    """The closing line of a sweep of several configurations."""
    test = f", test AUC {test_auc:.3f} read after the choice" if test_auc is not None else ""
    return (f"Study done in {format_duration(seconds)}: {n} configurations compared; chosen by "
            f"validation AUC alone: {chosen}{test}; comparison -> {path}")


def report_line(seconds: float, path) -> str:
    """``report: 22 s -> outputs/demo/report/report.html``."""
    return f"report: {format_duration(seconds)} -> {path}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample SD (n - 1, as Table 2); no SD for one value."""
    m = mean(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def _defined(value) -> bool:
    return value is not None and math.isfinite(float(value))


def headline(results: Sequence[Mapping], seconds: float, phantom: bool = False,
             report=None, tables=None, missing: Sequence[str] = (),
             configuration: str | None = None) -> str:
    """The study's closing line, from the folds' ``test_metrics.json``: the mean and sample SD
    of the test AUC over the folds where it is defined; on the phantom, its image-only oracle
    (the best achievable AUC on the same test images) and the gap between the two means
    (over the folds that have both), and the warning that these are not clinical results.
    ``configuration``: one configuration's line in a sweep of several (no time: the study's
    closing line has it)."""
    aucs = [float(r["auc"]) for r in results if _defined(r.get("auc"))]
    line = (f"Configuration {configuration}: " if configuration
            else f"Study done in {format_duration(seconds)}: ")
    if not aucs:
        line += f"no fold with a defined test AUC ({count(len(results), 'fold')})"
    else:
        m, sd = _mean_sd(aucs)
        line += f"mean test AUC {m:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
        both = [r for r in results if _defined(r.get("auc"))
                and _defined(r.get("phantom_oracle_auc"))]
        if both:
            om, osd = _mean_sd([float(r["phantom_oracle_auc"]) for r in both])
            gap = om - mean([float(r["auc"]) for r in both])
            line += (f" (oracle {om:.3f}" + (f" ± {osd:.3f}" if osd is not None else "")
                     + f", gap {gap:.3f})")
        line += f" over {count(len(aucs), 'fold')}"
    if missing:
        line += f" (no result: {', '.join(missing)})"
    if phantom:
        line += f" {PHANTOM_NOTE}"
    if report is not None:
        line += f"; report -> {report}"
    elif tables is not None:
        line += f"; tables -> {tables}"
    return line


def say(line: str) -> None:
    """Print ``line`` whole on global rank 0 (DDP ranks > 0 and their processes stay quiet)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(line, flush=True)


def interactive() -> bool:
    """Whether stdout and stderr are both terminals: only then are redrawn bars (tqdm's,
    Lightning's) shown; in a log file they are carriage-return spam."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


@dataclass
class StudyClock:
    """The folds of a sequential sweep, as far as this process has run them."""

    total: int | None                      # jobs in the sweep (None: unknown)
    started: float = field(default_factory=time.monotonic)
    trained: list[float] = field(default_factory=list)  # seconds of each fold trained here
    done: int = 0                          # jobs returned: trained, skipped or failed

    @property
    def position(self) -> int:
        """The running job's place in the sweep, from 1."""
        return self.done + 1

    def label(self, fold: int) -> str:
        return fold_label(fold, self.position, self.total)

    def fold_finished(self, seconds: float | None) -> None:
        """A job returned; ``seconds`` the time its fold trained, None when it did not (skipped
        as already finished, or failed): those do not enter the mean."""
        self.done += 1
        if seconds is not None:
            self.trained.append(float(seconds))

    def eta(self, running: float = 0.0) -> str | None:
        """``study ETA ...`` (``running``: seconds the running fold has taken); None when the
        sweep's size is unknown or no fold is left."""
        if self.total is None or self.total <= self.done:
            return None
        return eta_text(eta(self.trained, self.total - self.done, running))


_study: StudyClock | None = None


def start_study(total: int | None) -> StudyClock:
    global _study
    _study = StudyClock(total)
    return _study


def current_study() -> StudyClock | None:
    return _study


def end_study() -> None:
    global _study
    _study = None
