"""Training's fixed cost per step, cut without changing what is trained or recorded.

The training loss is summed by the module and logged once per epoch instead of ``self.log``
in every step, and the progress bar is redrawn every ``progress_interval`` seconds instead of
after every batch (benchmarks/step_overhead.py measures both). Same seed, same batches: the
weights, the recorded history and the logged losses must be the same to the bit.
"""

from __future__ import annotations

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import step_overhead
from hipdisloc.models.classifier import DislocationClassifier
from hipdisloc.stages.train.fold import (
    STAGES,
    SelectionRecorder,
    ThrottledRichProgressBar,
    ThrottledTQDMProgressBar,
    stage_trainer,
)

PerStepLog = step_overhead.PerStepLog  # the module as it was: self.log every step


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(28, 1, 16, 16, generator=g)
    y = (torch.arange(28) % 3 == 0).float()
    pos = torch.arange(28)
    # 20 training images in batches of 6: the last batch holds 2 (the epoch mean is weighted)
    train = DataLoader(TensorDataset(x[:20], y[:20], pos[:20]), batch_size=6, shuffle=True,
                       generator=torch.Generator().manual_seed(2))
    val = DataLoader(TensorDataset(x[20:], y[20:], pos[20:]), batch_size=4)
    return train, val


def _fit(cls: type, out, progress_interval: float) -> tuple[dict, list, pd.DataFrame, float]:
    pl.seed_everything(0)
    model = cls("none", 25.0, 1e-3)
    model.net = step_overhead.TinyNet()  # ResNet18's layout and learning-rate groups, in small
    model.unfreeze()
    recorder = SelectionRecorder(out / "checkpoints", 0.8)
    trainer = stage_trainer(out, STAGES[1], recorder,
                            {"accelerator": "cpu", "devices": 1, "enable_progress_bar": True},
                            progress_interval=progress_interval, max_epochs=2,
                            enable_model_summary=False)
    train, val = _loaders()
    trainer.fit(model, train, val)
    logs = pd.read_csv(out / "logs" / STAGES[1] / "metrics.csv")
    return (model.state_dict(), recorder.history, logs,
            float(trainer.callback_metrics["train/loss"]))


def test_epoch_loss_and_throttled_bar_train_and_record_the_same(tmp_path):
    old = _fit(PerStepLog, tmp_path / "old", progress_interval=0)
    new = _fit(DislocationClassifier, tmp_path / "new", progress_interval=0.5)
    old_state, old_history, old_logs, old_loss = old
    new_state, new_history, new_logs, new_loss = new
    assert old_state.keys() == new_state.keys()
    for k in old_state:
        assert torch.equal(old_state[k], new_state[k]), k
    # the history the selection rule and history.csv use, the training loss included
    assert len(new_history) == 2 and new_history == old_history
    assert all(row["train_loss"] == row["train_loss"] for row in new_history)  # not NaN
    assert new_loss == old_loss
    # Lightning's CSV logs: the same train/loss per epoch, at the same step
    cols = ["epoch", "step", "train/loss"]
    assert new_logs.dropna(subset=["train/loss"])[cols].equals(
        old_logs.dropna(subset=["train/loss"])[cols])


def test_the_bar_is_redrawn_at_most_every_interval_and_at_the_last_batch(tmp_path):
    bar = ThrottledTQDMProgressBar(interval=3600)
    assert bar._due(1, 10) and not bar._due(2, 10) and not bar._due(9, 10)
    assert bar._due(10, 10)  # the last batch always: the bar ends full
    assert ThrottledTQDMProgressBar(interval=0)._due(2, 10)

    def bars(**kwargs) -> list[type]:
        trainer = stage_trainer(tmp_path, STAGES[0], SelectionRecorder(tmp_path, 0.8),
                                {"accelerator": "cpu"}, **kwargs)
        return [type(c) for c in trainer.callbacks if isinstance(c, pl.callbacks.ProgressBar)]

    throttled = {ThrottledTQDMProgressBar, ThrottledRichProgressBar}
    assert len(bars()) == 1 and bars()[0] in throttled
    assert bars(progress_interval=0)[0] not in throttled  # Lightning's own
    assert bars(enable_progress_bar=False) == []


def test_step_overhead_benchmark_runs(capsys):
    (r,) = step_overhead.main(["--steps", "3", "--warmup", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "fixed cost" in out and "H100 batch 64" in out
    assert r["plain_ms"] > 0 and r["lightning_ms"] > 0 and r["before_ms"] > 0
    assert [h["batch_size"] for h in r["h100"]] == [64, 128, 256]
    assert abs(r["h100"][0]["plain_ms"] - 64 / 3552 * 1e3) < 1e-9


def test_a_disabled_throttled_bar_passes_validation_batches_through():
    """DDP ranks other than 0 disable their bar: it never learns the current dataloader, so
    the throttle must not ask for its total."""
    from types import SimpleNamespace

    from hipdisloc.stages.train.fold import ThrottledRichProgressBar

    bar = ThrottledRichProgressBar(0.5)
    bar.disable()
    trainer = SimpleNamespace(num_val_batches=[3])
    for i in range(3):
        bar.on_validation_batch_end(trainer, None, None, None, i, 0)
