"""The report's figures (matplotlib, no display): ROC curves, loss curves, confusion matrices,
reliability curves, decision curve and the saliency grid. Each function takes plain tables and
returns a Figure; :func:`save` writes it as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from hipdisloc.stages.report.sweep_data import logits_of  # noqa: E402

FPR_GRID = np.linspace(0.0, 1.0, 101)


def save(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(figure)
    tmp.replace(path)
    return path


def mean_roc(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Vertical averaging: each fold's TPR interpolated on :data:`FPR_GRID`; (mean, SD)."""
    tprs = np.array([np.interp(FPR_GRID, fpr, tpr) for fpr, tpr in curves])
    tprs[:, 0] = 0.0
    return tprs.mean(axis=0), tprs.std(axis=0, ddof=1) if len(tprs) > 1 else np.zeros(len(FPR_GRID))


def roc_figure(folds: Mapping[int, pd.DataFrame], aucs: Mapping[int, float]) -> Figure:
    """Per-fold ROC curves (thin), the mean ROC with a ±1 SD band and the chance line.
    ``folds``: fold -> table with ``dislocated`` and ``score``."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    curves = []
    for fold, pred in folds.items():
        if pred["dislocated"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(pred["dislocated"], logits_of(pred))  # no saturation ties
        curves.append((fpr, tpr))
        ax.plot(fpr, tpr, lw=0.8, alpha=0.45, label=f"fold {fold} (AUC {aucs[fold]:.3f})")
    if curves:
        mean, sd = mean_roc(curves)
        values = np.array([aucs[f] for f in folds if np.isfinite(aucs.get(f, np.nan))])
        spread = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.plot(FPR_GRID, mean, color="C3", lw=2.2,
                label=f"mean (AUC {values.mean():.3f} ± {spread:.3f})")
        ax.fill_between(FPR_GRID, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1),
                        color="C3", alpha=0.15, label="± 1 SD")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title="ROC, test images of each fold")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def loss_figure(histories: Mapping[int, pd.DataFrame], selected: Mapping[int, int]) -> Figure:
    """Training and validation loss per epoch (stages in sequence), one panel per fold, the
    selected checkpoint marked. ``histories``: fold -> history.csv; ``selected``: fold -> row."""
    n = max(1, len(histories))
    cols = min(5, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False,
                             sharey=True)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (fold, history) in zip(axes.ravel(), histories.items(), strict=False):
        x = np.arange(1, len(history) + 1)
        if "train_loss" in history:
            ax.plot(x, history["train_loss"], marker=".", label="train")
        ax.plot(x, history["val_loss"], marker=".", label="validation")
        pick = selected.get(fold)
        if pick is not None and 0 <= pick < len(history):
            ax.axvline(pick + 1, color="C3", ls=":", lw=1.2)
            ax.plot(pick + 1, history["val_loss"].iloc[pick], "o", color="C3", ms=6,
                    label="selected")
        stages = history["stage"].tolist()
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", lw=0.8)
        ax.set_title(f"fold {fold}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("weighted BCE loss", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def lr_finder_figure(curves: Mapping[int, pd.DataFrame],
                     suggestions: Mapping[int, float | None]) -> Figure:
    """Stage 2's LR range test per fold: smoothed training loss against the top group's rate
    (log scale), the suggestion marked."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for k, (fold, curve) in enumerate(curves.items()):
        line, = ax.plot(curve["lr"], curve["smoothed"], lw=1.2, label=f"fold {fold}",
                        color=f"C{k % 10}")
        lr = suggestions.get(fold)
        if lr:
            y = float(np.interp(np.log(lr), np.log(curve["lr"]), curve["smoothed"]))
            ax.plot(lr, y, "o", color=line.get_color(), ms=5)
    ax.set_xscale("log")
    ax.set_xlabel("top learning rate (head group; lower groups keep the slice)", fontsize=8)
    ax.set_ylabel("smoothed training loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def confusion_figure(matrices: Mapping[str, Mapping[str, int]], called: str) -> Figure:
    """One 2 × 2 count matrix per entry (folds, then 'pooled'); ``called`` says what a positive
    call is (e.g. "at each fold's threshold")."""
    n = max(1, len(matrices))
    cols = min(6, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (name, c) in zip(axes.ravel(), matrices.items(), strict=False):
        grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(grid / max(1, grid.sum()), cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9)
        ax.set_xticks([0, 1], ["normal", "disloc."], fontsize=7)
        ax.set_yticks([0, 1], ["normal", "disloc."], fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"Confusion matrices (rows: truth, columns: called {called})", fontsize=9)
    fig.tight_layout()
    return fig


def reliability_figure(curves: Mapping[str, pd.DataFrame]) -> Figure:
    """Observed rate against mean predicted probability (quantile bins), one line per method."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for name, curve in curves.items():
        ax.plot(curve["mean_predicted"], curve["observed_rate"], marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed share dislocated",
           title="Reliability, pooled test images")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return fig


def decision_curve_figure(curve: pd.DataFrame, prevalence: float) -> Figure:
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    ax.plot(curve["threshold"], curve["net_benefit_model"], label="model (recalibrated)", lw=2)
    ax.plot(curve["threshold"], curve["net_benefit_all"], label="treat all", ls="--")
    ax.plot(curve["threshold"], curve["net_benefit_none"], label="treat none", color="k", lw=1)
    top = max(prevalence, float(np.nanmax(curve["net_benefit_model"])))
    ax.set_ylim(-0.25 * top, 1.15 * top)
    ax.set(xlabel="threshold probability", ylabel="net benefit",
           title="Decision curve, pooled test images")
    ax.legend(fontsize=8)
    return fig


def saliency_figure(rows: Sequence[dict], methods: Sequence[str]) -> Figure:
    """A grid: one row per example (its ``title``, ``crop`` and one overlay image per method)."""
    n = max(1, len(rows))
    cols = 1 + len(methods)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.95 * n), squeeze=False)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["crop"], cmap="gray")
        axes[r, 0].set_ylabel(row["title"], fontsize=7)
        for c, method in enumerate(methods, start=1):
            axes[r, c].imshow(row["overlays"][method])
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, name in enumerate(["crop", *methods]):
        axes[0, c].set_title(name.replace("_", " "), fontsize=8)
    fig.tight_layout()
    return fig
