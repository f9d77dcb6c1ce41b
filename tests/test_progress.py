"""What a user reads while a study runs (hipdisloc.progress): durations, the stage and fold
lines, the study's ETA, the closing headline, and how many epoch lines a fold prints."""

from __future__ import annotations

import pytest

from hipdisloc.progress import (
    StudyClock,
    bar,
    count,
    epoch_due,
    epoch_line,
    eta,
    eta_text,
    fold_line,
    format_duration,
    headline,
    report_line,
    stage_line,
)
from hipdisloc.stages.train.study import sweep_size


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (0.4, "0 s"), (41.2, "41 s"), (59.6, "1 min 00 s"), (662, "11 min 02 s"),
    (3599, "59 min 59 s"), (3600, "1 h 00 min"), (7530, "2 h 05 min"), (-3, "0 s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_stage_lines():
    assert count(2574, "image") == "2,574 images" and count(1, "image") == "1 image"
    assert stage_line("prepare", 41.3, "2,574 images") == "stage prepare: 2,574 images in 41 s"
    assert stage_line("detect", 0.2, reused="data/demo/detector") == \
        "stage detect: reused data/demo/detector (0 s)"
    assert stage_line("crop", 75) == "stage crop: done in 1 min 15 s"
    assert report_line(22.4, "outputs/demo/report/report.html") == \
        "report: 22 s -> outputs/demo/report/report.html"


def test_eta_is_the_mean_finished_fold_times_the_folds_left():
    assert eta([], 10) is None  # nothing finished: no estimate
    assert eta_text(None) == "study ETA estimating"
    assert eta([40.0, 50.0], 8) == 360.0  # 45 s x 8
    assert eta([40.0, 50.0], 8, running=30.0) == 330.0  # the running fold's 30 s are spent
    assert eta([40.0], 1, running=100.0) == 0.0  # a slow last fold: never negative
    assert eta_text(360.0) == "study ETA 6 min 00 s"


def test_study_clock_counts_skipped_folds_as_done_but_not_in_the_mean():
    clock = StudyClock(total=4)
    assert clock.label(0) == "fold 0 (1/4)"
    assert clock.eta() == "study ETA estimating"
    clock.fold_finished(None)  # fold 0 skipped (already finished)
    assert clock.label(1) == "fold 1 (2/4)" and clock.eta() == "study ETA estimating"
    clock.fold_finished(60.0)
    clock.fold_finished(120.0)
    assert clock.label(3) == "fold 3 (4/4)"
    assert clock.eta() == "study ETA 1 min 30 s"  # mean 90 s x 1 fold left
    assert clock.eta(running=30.0) == "study ETA 1 min 00 s"
    clock.fold_finished(90.0)
    assert clock.eta() is None  # nothing left to estimate
    assert StudyClock(total=None).eta() is None  # sweep size unknown


def test_fold_and_epoch_lines():
    assert fold_line("fold 3 (4/10)", 0.7123, 48.2, 0.7904, "study ETA 4 min 48 s") == \
        "fold 3 (4/10): test AUC 0.712 (oracle 0.790), 48 s; study ETA 4 min 48 s"
    assert fold_line("fold 3", float("nan"), 5) == "fold 3: test AUC n/a, 5 s"
    assert bar(1, 3) == "[###-------]" and bar(0, 3) == "[----------]" \
        and bar(3, 3) == "[##########]"
    assert epoch_line("fold 0 (1/10)", 1, 3, 16.4, 0.68449, "study ETA estimating") == \
        "fold 0 (1/10) [###-------] epoch 1/3, val AUC 0.684, 16 s; study ETA estimating"
    assert epoch_line("fold 0", 2, 4, 20) == "fold 0 [#####-----] epoch 2/4, 20 s"


def test_a_fold_prints_at_most_three_epoch_lines():
    assert [k for k in range(1, 21) if epoch_due(k, 20)] == [5, 10, 15]
    assert [k for k in range(1, 4) if epoch_due(k, 3)] == [1, 2]  # the demo's 3 epochs
    assert [k for k in range(1, 7) if epoch_due(k, 6)] == [2, 3, 5]
    assert not any(epoch_due(k, 1) for k in range(0, 3))
    for n in range(1, 60):
        assert sum(epoch_due(k, n) for k in range(1, n + 1)) == min(n - 1, 3)


def _fold(auc, oracle=None):
    return {"auc": auc, **({"phantom_oracle_auc": oracle} if oracle is not None else {})}


def test_headline_mean_sd_oracle_gap_and_the_phantom_warning():
    results = [_fold(0.70, 0.80), _fold(0.74, 0.82), _fold(0.66, 0.78)]
    # AUC mean 0.700, sample SD 0.040; oracle 0.800 ± 0.020; gap 0.100
    assert headline(results, 662, phantom=True, report="outputs/demo/report/report.html") == (
        "Study done in 11 min 02 s: mean test AUC 0.700 ± 0.040 (oracle 0.800 ± 0.020, gap "
        "0.100) over 3 folds (phantom: synthetic, not clinical); "
        "report -> outputs/demo/report/report.html")


def test_headline_of_a_real_archive_and_of_undefined_folds():
    results = [_fold(0.75), _fold(float("nan")), _fold(None), _fold(0.65)]
    line = headline(results, 90, tables="out/table2.md", missing=["fold4"])
    assert line == ("Study done in 1 min 30 s: mean test AUC 0.700 ± 0.071 over 2 folds "
                    "(no result: fold4); tables -> out/table2.md")
    assert "phantom" not in line and "oracle" not in line
    assert headline([_fold(0.7, 0.8)], 5) == \
        "Study done in 5 s: mean test AUC 0.700 (oracle 0.800, gap 0.100) over 1 fold"
    assert headline([_fold(None)], 5).startswith(
        "Study done in 5 s: no fold with a defined test AUC (1 fold)")


def test_sweep_size_counts_the_basic_sweepers_jobs():
    assert sweep_size(["experiment=demo", "fold=0,1,2,3,4,5,6,7,8,9"]) == 10
    assert sweep_size(["fold=range(0,10)", "seed=0,1"]) == 20
    assert sweep_size(["fold=0"], {"seed": "1,2,3"}) == 3
    assert sweep_size(["fold=0"]) == 1
