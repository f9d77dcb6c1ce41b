"""The study states its cost before it starts: the paper's command and the demo, on this
machine, with the device it will use, per stage; on a CPU with a study of more than two hours,
the advice to run the demo."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hipdisloc.paths import PROJECT_ROOT
from hipdisloc.stages.train.estimate import StageCost, describe, duration

STAGE_LINE = r"  {stage}: [0-9.]+ (s|min|h|days) \((reused|.+)\)"


def estimate_only(tmp_path, *overrides: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hipdisloc.train", *overrides, "fold=0..9", "-m", "estimate=only",
         f"paths.data_dir={tmp_path / 'data'}", f"paths.out_dir={tmp_path / 'out'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert not (tmp_path / "data").exists()  # estimate=only: nothing was built
    return done.stdout


@pytest.mark.parametrize("overrides, name, stages", [
    ((), "rouzrokh2021", ("phantom", "prepare", "detect", "crop", "folds")),
    (("experiment=demo",), "demo", ("phantom", "prepare", "detect", "crop",
                                     "self_supervised", "folds")),
])
def test_the_study_prints_its_estimate_before_it_starts(tmp_path, overrides, name, stages):
    out = estimate_only(tmp_path, *overrides)
    lines = out.splitlines()
    head = [line for line in lines if line.startswith("estimate: ")]
    assert len(head) == 1, out[-2000:]
    assert re.fullmatch(rf"estimate: {name}, 10 fold\(s\), [0-9,]+ radiographs \([0-9,]+ "
                        r"crops\) on (CPU \(\d+ threads\)|GPU \(.+\)): about [0-9.]+ "
                        r"(s|min|h|days)", head[0]), head[0]
    for stage in stages:
        assert any(re.fullmatch(STAGE_LINE.format(stage=stage), line) for line in lines), stage
    advice = [line for line in lines if "`experiment=demo`" in line]
    if name == "rouzrokh2021" and "on CPU" in head[0]:
        assert advice  # the paper's scale on a CPU: days, and the demo is named
    if name == "demo":
        assert not advice
    assert "self.log" not in out


def test_the_advice_depends_on_the_device_and_the_total():
    from hipdisloc.config import TrainConfig

    cfg = TrainConfig()
    costs = [StageCost("folds", 3 * 3600, "x")]
    assert any("experiment=demo" in line for line in describe(costs, _size(), cfg, 10, "CPU (2)"))
    assert not any("experiment=demo" in line
                   for line in describe(costs, _size(), cfg, 10, "GPU (H200, 1 visible)"))
    short = [StageCost("folds", 600, "x")]
    assert not any("experiment=demo" in line for line in describe(short, _size(), cfg, 10,
                                                                   "CPU (2)"))
    assert [duration(s) for s in (30, 600, 3 * 3600, 3 * 86400)] == [
        "30 s", "10 min", "3.0 h", "3.0 days"]


def _size():
    from hipdisloc.stages.train.estimate import CohortSize

    return CohortSize(1000, 900, 0.02)


def test_the_pretrain_stage_is_costed_from_its_cohort_and_epochs(tmp_path):
    from hipdisloc.config import PhantomSettings, TrainConfig
    from hipdisloc.stages.train.estimate import CohortSize, pretrain_cost

    cfg = TrainConfig()
    cfg.cohort.phantom = PhantomSettings(n_patients=1000)
    cfg.schedule.batch_size = 32
    cfg.pretrain.n_patients, cfg.pretrain.epochs, cfg.pretrain.batch_size = 500, 2, 64
    size = CohortSize(radiographs=1200, crops=1000, positive_share=0.25)
    assert pretrain_cost(cfg, size, 0.01, 0.2, tmp_path) is None  # model.pretrained: auto
    cfg.model.pretrained = "privileged_phantom_geometry"
    cost = pretrain_cost(cfg, size, 0.01, 0.2, tmp_path)
    # half the patients: 600 radiographs x 0.01 s; 2 epochs x floor(0.9 x 500 / 64) = 7 steps
    # of 0.2 s x 64 / 32 = 0.4 s
    assert cost.stage == "pretrain" and cost.seconds == pytest.approx(6.0 + 2 * 7 * 0.4)
    # cut by the study's detector: 600 radiographs x 0.05 s more
    cut = pretrain_cost(cfg, size, 0.01, 0.2, tmp_path, detect_per_image=0.05)
    assert cut.seconds == pytest.approx(cost.seconds + 30.0) and "by the detector" in cut.basis
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "stage.json").write_text("{}")
    assert pretrain_cost(cfg, size, 0.01, 0.2, tmp_path) == StageCost("pretrain", 0.0, "reused")
    # the self-supervised backbone: its cohort as above, two views a step
    from hipdisloc.stages.train.estimate import self_supervised_cost

    assert self_supervised_cost(cfg, size, 0.01, 0.2, tmp_path) is None
    cfg.model.pretrained = "self_supervised"
    s = cfg.self_supervised
    s.n_patients, s.epochs, s.batch_size = 500, 3, 128
    ssl = self_supervised_cost(cfg, size, 0.01, 0.2, tmp_path)
    # 600 radiographs x 0.01 s; 3 epochs x floor(500 / 128) = 3 steps of 2 x 0.2 s x 128 / 32
    assert ssl.stage == "self_supervised" and ssl.seconds == pytest.approx(6.0 + 3 * 3 * 1.6)
