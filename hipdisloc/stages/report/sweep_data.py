"""Read what a sweep left on disk: per fold its metrics, test and validation predictions,
history, the selected weights; for the sweep its upstream stages (``inputs.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class FoldOutputs:
    fold: int
    folder: Path
    metrics: dict  # test_metrics.json
    test: pd.DataFrame  # predictions.csv: image_id, patient (hashed), sex, dislocated, score
    validation: pd.DataFrame | None  # validation_predictions.csv (older sweeps: absent)
    history: pd.DataFrame | None  # history.csv

    @property
    def threshold(self) -> float:
        """The fold's decision threshold on the score (chosen on its validation images)."""
        return float(self.metrics.get("threshold", 0.5))

    @property
    def threshold_logit(self) -> float:
        if "threshold_logit" in self.metrics:
            return float(self.metrics["threshold_logit"])
        t = min(max(self.threshold, 1e-12), 1 - 1e-12)
        return float(np.log(t / (1 - t)))

    def margin(self, table: pd.DataFrame) -> np.ndarray:
        """Each image's logit minus the fold's threshold: positive calls are margin >= 0, so
        folds with different thresholds pool into one table."""
        return logits_of(table) - self.threshold_logit

    @property
    def selected_weights(self) -> Path:
        return self.folder / "checkpoints" / "selected.pt"

    @property
    def selected_row(self) -> int | None:
        return self.metrics.get("selection", {}).get("epoch_index")


@dataclass
class SweepInputs:
    """Where the sweep's upstream stages are (from a fold's ``inputs.json``)."""

    experiment: str
    data_dir: Path
    crops_dir: Path
    cohort: str  # phantom | manifest
    config: dict

    @property
    def is_phantom(self) -> bool:
        return self.cohort == "phantom"

    def stage(self, name: str) -> Path:
        return self.data_dir / name


def logits_of(table: pd.DataFrame) -> np.ndarray:
    """The ``logit`` column; a sweep from before logits were kept: the logit of its score."""
    if "logit" in table.columns:
        return table["logit"].to_numpy(float)
    p = np.clip(table["score"].to_numpy(float), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype={"image_id": str, "patient": str}) if path.is_file() else None


def load_folds(sweep_dir: str | Path) -> list[FoldOutputs]:
    """Every finished fold (``fold*/test_metrics.json``) of the sweep, in fold order."""
    folds = []
    for folder in Path(sweep_dir).glob("fold*"):
        path = folder / "test_metrics.json"
        if not (folder.is_dir() and path.is_file()):
            continue
        metrics = json.loads(path.read_text())
        test = _csv(folder / "predictions.csv")
        if test is None:
            raise FileNotFoundError(f"{folder}: test_metrics.json without predictions.csv")
        folds.append(FoldOutputs(int(metrics["fold"]), folder, metrics, test,
                                 _csv(folder / "validation_predictions.csv"),
                                 _csv(folder / "history.csv")))
    if not folds:
        raise FileNotFoundError(f"{sweep_dir}: no fold*/test_metrics.json")
    return sorted(folds, key=lambda f: f.fold)


def load_inputs(folds: list[FoldOutputs], data_dir: str | Path | None = None) -> SweepInputs | None:
    """The sweep's ``inputs.json`` (the first fold that has one); ``data_dir`` overrides where
    the stages are (a sweep moved to another machine). None when no fold recorded it."""
    for fold in folds:
        path = fold.folder / "inputs.json"
        if path.is_file():
            record = json.loads(path.read_text())
            root = Path(data_dir) if data_dir else Path(record["data_dir"])
            crops = root / "crops" if data_dir else Path(record["crops_dir"])
            return SweepInputs(record["experiment"], root, crops, record["cohort"],
                               record.get("config", {}))
    return None
