"""The fold ensemble: every fold's selected model on the same crops, sigmoid scores averaged.

:class:`FoldEnsemble` is a plain ``nn.Module`` (what is exported to TorchScript and ONNX):
input normalised crops (B, 1, S, S) as training feeds them (per-image mean/std,
:func:`hipdisloc.data.classification.normalise`), outputs the mean score (B,) and every fold's
score (B, K). The spread across folds (SD with n - 1, as Table 2's; min; max) is computed from
the fold scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hipdisloc.data.classification import normalise
from hipdisloc.ood import features_and_logits


class FoldEnsemble(torch.nn.Module):
    """The folds' networks (each :class:`DislocationClassifier`'s ``net``, a torchvision
    ResNet18) on the same batch; the one grey channel is repeated to three as
    ``DislocationClassifier.forward`` does. Holds plain modules only, so it traces and exports
    (a LightningModule does not)."""

    def __init__(self, models: Sequence[torch.nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one fold model")
        self.nets = torch.nn.ModuleList([getattr(m, "net", m) for m in models])
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean score (B,), fold scores (B, K)) of normalised crops ``x`` (B, 1, S, S)."""
        x = x.expand(-1, 3, -1, -1)
        scores = torch.stack([torch.sigmoid(net(x)[:, 0]) for net in self.nets], dim=1)
        return scores.mean(dim=1), scores


def as_batch(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Crops (C, C) in [0, 1] -> the normalised batch (B, 1, C, C) training feeds the model."""
    return torch.from_numpy(np.stack([normalise(np.asarray(c, np.float32)) for c in crops]))[
        :, None]


def spread(fold_scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of (B, K) fold scores: mean, SD (n - 1; NaN with one fold), min, max."""
    k = fold_scores.shape[1]
    sd = fold_scores.std(axis=1, ddof=1) if k > 1 else np.full(len(fold_scores), np.nan)
    return {"score": fold_scores.mean(axis=1), "score_sd": sd,
            "score_min": fold_scores.min(axis=1), "score_max": fold_scores.max(axis=1)}


def score(ensemble: FoldEnsemble, batch: torch.Tensor) -> np.ndarray:
    """Fold scores (B, K), float64 on the CPU."""
    with torch.no_grad():
        _, per_fold = ensemble(batch)
    return per_fold.detach().cpu().double().numpy()


def score_with_features(ensemble: FoldEnsemble, batch: torch.Tensor
                        ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fold scores (B, K) as :func:`score` gives them, and each fold's penultimate features
    (K arrays (B, 512)) from the same pass (:func:`hipdisloc.ood.features_and_logits`)."""
    x = batch.expand(-1, 3, -1, -1)
    scores, features = [], []
    with torch.no_grad():
        for net in ensemble.nets:
            f, logit = features_and_logits(net, x)
            scores.append(torch.sigmoid(logit))
            features.append(f.cpu().double().numpy())
    return torch.stack(scores, dim=1).cpu().double().numpy(), features


def saliency(models: Sequence[torch.nn.Module], batch: torch.Tensor) -> np.ndarray:
    """Vanilla-gradient maps (B, S, S) of each fold's dislocation logit
    (:func:`hipdisloc.stages.report.saliency.attributions` on each :class:`DislocationClassifier`),
    averaged over the folds."""
    from hipdisloc.stages.report.saliency import attributions

    maps = [attributions(m, batch, ("vanilla_gradient",))["vanilla_gradient"] for m in models]
    return np.mean(maps, axis=0)
