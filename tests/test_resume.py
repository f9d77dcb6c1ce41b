"""Resume that reproduces: a fold killed (SIGKILL) after a finished epoch of stage 1, after a
finished epoch of stage 2 and in the middle of an epoch, each time rerun with the same command,
ends with the test metrics, the history and the selected weights of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import prepare_and_crop

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crops(small_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    prepare_and_crop(small_phantom[0], out, 96, 48)
    return out / "crops"


def _run(crops: Path, out: Path, kill: str | None = None) -> int:
    cmd = [sys.executable, "-m", "tests.resume_job", str(crops), str(out)]
    done = subprocess.run([*cmd, *(["--kill", kill] if kill else [])], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def test_a_fold_killed_three_times_ends_where_an_uninterrupted_one_does(crops, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _run(crops, straight) == 0
    for kill in ("head:1", "all:1", "all:1:1"):  # stage 1's epoch 0 done; stage 2's epoch 0
        assert _run(crops, resumed, kill) == -signal.SIGKILL  # done; stage 2's epoch 1, batch 1
        assert not (resumed / "test_metrics.json").exists()
    assert _run(crops, resumed) == 0

    first = json.loads((straight / "test_metrics.json").read_text())
    again = json.loads((resumed / "test_metrics.json").read_text())
    assert again == first
    assert first["selection"]["epochs"] == 4  # every epoch once, none repeated
    for name in ("history.csv", "predictions.csv", "validation_predictions.csv", "lr_find.csv"):
        assert (resumed / name).read_text() == (straight / name).read_text(), name
    a = torch.load(straight / "checkpoints" / "selected.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "selected.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
