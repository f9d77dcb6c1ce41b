"""Saliency maps of the classifier (captum) and how much of them falls on the implant.

Three methods, each giving one non-negative map per image at the crop's size:

- ``vanilla_gradient``: |d logit / d pixel| (Simonyan et al.; the paper's saliency maps);
- ``integrated_gradients``: |IG| from a black (zero after normalisation) baseline;
- ``grad_cam``: Grad-CAM on the last residual block (``layer4``), ReLU, upsampled bilinearly.

On the phantom the implant mask is known, so a map can be checked: :func:`mask_share` is the
share of the attribution inside the mask, to read against the mask's share of the image (a map
that ignored the implant would give about the same number as the area share).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

METHODS = ("vanilla_gradient", "integrated_gradients", "grad_cam")


def _logit(model: torch.nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x).reshape(len(x), -1)[:, 0]
    return forward


def attributions(model: torch.nn.Module, images: torch.Tensor,
                 methods: tuple[str, ...] = METHODS, ig_steps: int = 32) -> dict[str, np.ndarray]:
    """Maps (N, S, S), float32, >= 0, of normalised crops ``images`` (N, 1, S, S) for the model's
    dislocation logit. ``model`` is a :class:`DislocationClassifier` (its ``net`` is the ResNet)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown saliency method(s) {sorted(unknown)}; choose from {METHODS}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, S, S), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    forward = _logit(model)
    x = images.detach().float().clone().requires_grad_(True)
    out: dict[str, np.ndarray] = {}
    try:
        for method in methods:
            if method == "vanilla_gradient":
                a = Saliency(forward).attribute(x, abs=True)
            elif method == "integrated_gradients":
                a = IntegratedGradients(forward).attribute(
                    x, baselines=torch.zeros_like(x), n_steps=ig_steps,
                    internal_batch_size=max(1, len(x)) * 8).abs()
            else:
                cam = LayerGradCam(forward, model.net.layer4).attribute(x, relu_attributions=True)
                a = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear").clamp(min=0)
            out[method] = a.detach().sum(dim=1).cpu().numpy().astype(np.float32)
    finally:
        model.train(was_training)
    return out


def mask_share(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the total attribution inside ``mask`` (bool, same shape). NaN for an all-zero
    map."""
    if attribution.shape != mask.shape:
        raise ValueError(f"attribution {attribution.shape} and mask {mask.shape} differ in shape")
    total = float(attribution.sum())
    return float(attribution[mask].sum()) / total if total > 0 else float("nan")


def overlay(crop: np.ndarray, attribution: np.ndarray, alpha: float = 0.6,
            colormap: str = "jet") -> Image.Image:
    """The crop in grey with the map (scaled to its 99th percentile) blended on top, as RGB."""
    from matplotlib import colormaps

    grey = crop.astype(np.float32)
    span = float(grey.max() - grey.min())
    grey = (grey - grey.min()) / span if span > 0 else np.zeros_like(grey)
    top = float(np.percentile(attribution, 99)) if attribution.size else 0.0
    heat = np.clip(attribution / top, 0, 1) if top > 0 else np.zeros_like(attribution)
    coloured = colormaps[colormap](heat)[..., :3]
    weight = alpha * heat[..., None]  # the overlay shows where the map is, the crop elsewhere
    rgb = (1 - weight) * grey[..., None] + weight * coloured
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
