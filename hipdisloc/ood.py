"""Is a crop like the ones a fold model was trained on? The distribution of its training crops'
penultimate features, and where a new crop falls in it.

Each fold records, at the end of training, the pooled features its selected ResNet18 gives
before its head (512 from the average pool; 1,024, max and average, with ``model.head: fastai``)
for a seeded sample of its training crops, each once and unaugmented: their mean and a shrunk
covariance (Ledoit–Wolf: hundreds of dimensions from a few thousand crops). The reference a
new crop is compared with is the Mahalanobis distances of the fold's validation and test crops,
not of the training crops themselves: crops the network trained on and the covariance was
fitted to sit much closer to the mean than any new crop of the same archive does (with 41
training crops, every held-out crop lay beyond all of them), so their distances would call
every new radiograph unusual. A new crop's distance is reported as the percentile of the
reference (100: farther than every one of them); ``predict`` calls a hip ``uncertain``
(``unlike the training crops``) above a configured percentile, so a radiograph unlike the
training archive gets no risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from hipdisloc.models.classifier import pooled_features

FILENAME = "feature_distribution.npz"


def features_and_logits(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """A torchvision ResNet's pooled features (B, F) and its logit (B,), in one pass: the same
    arithmetic as ``net(x)``."""
    features = pooled_features(net, x)
    return features, net.fc(features)[:, 0]


@dataclass
class FeatureDistribution:
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F): inverse of the shrunk covariance
    reference: np.ndarray  # sorted distances of held-out crops (percentiles are of these)
    shrinkage: float = 0.0

    @classmethod
    def fit(cls, features: np.ndarray, reference: np.ndarray) -> FeatureDistribution:
        """Mean and shrunk covariance of ``features`` (training crops); the percentiles are
        of the distances of ``reference`` (crops that were neither trained on nor fitted)."""
        features = np.asarray(features, np.float64)
        if len(features) < 2 or len(reference) < 1:
            raise ValueError(f"a feature distribution needs at least 2 training crops and 1 "
                             f"reference crop, got {len(features)} and {len(reference)}")
        estimate = LedoitWolf().fit(features)
        fitted = cls(estimate.location_, estimate.precision_, np.zeros(0),
                     float(estimate.shrinkage_))
        fitted.reference = np.sort(fitted.distance(reference))
        return fitted

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, F)."""
        centred = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.clip(np.einsum("nf,fg,ng->n", centred, self.precision, centred),
                               0, None))

    def percentile(self, features: np.ndarray) -> np.ndarray:
        """Share of the reference crops (in %) closer to the mean than each row: 0–100."""
        d = self.distance(features)
        return 100.0 * np.searchsorted(self.reference, d, side="right") / len(self.reference)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mean=self.mean, precision=self.precision, reference=self.reference,
                 shrinkage=np.float64(self.shrinkage))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureDistribution:
        with np.load(path) as f:
            return cls(f["mean"], f["precision"], f["reference"], float(f["shrinkage"]))
