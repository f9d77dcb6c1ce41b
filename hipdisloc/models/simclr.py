"""SimCLR on crops (Chen et al. 2020), pixels only: a ResNet18 learns to give two augmented views
of the same crop nearby features and views of other crops distant ones (lightly's NT-Xent loss
and projection head). No label, measurement or mask is read: the batches are crops.

The augmentations are the invariances the backbone is taught, so they are chosen to keep what a
dislocation risk depends on, the implant's orientation and its size relative to the hip, and to
vary what it does not:

- kept: no rotation (a cup's inclination is an angle in the image), scale jitter of at most
  ``scale`` (5 %: the head's size relative to the cup and the box stays readable), a horizontal
  flip (it mirrors the hip; the angles' magnitudes are unchanged, as in the classifier's own
  augmentation);
- varied: position (``shift``, a fraction of the crop: the detector's boxes are not framed
  alike), exposure and contrast (gamma, gain, offset: acquisition), noise and blur (detector,
  resolution).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Views:
    """How two views of a crop differ (the ranges each draw comes from)."""

    shift: float = 0.08  # translation, fraction of the crop's side, each axis
    scale: float = 0.05  # zoom in [1 - scale, 1 + scale]
    flip: float = 0.5  # probability of a horizontal flip
    gamma: float = 0.35  # |log gamma| at most (on the crop rescaled to [0, 1])
    contrast: float = 0.2  # gain in [1 - contrast, 1 + contrast]
    brightness: float = 0.2  # offset (in the normalised crop's standard deviations)
    noise: float = 0.1  # Gaussian noise SD at most (same units)
    blur: float = 1.0  # Gaussian blur sigma at most, pixels


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (5 x 5 kernel, separable); sigma 0: unchanged."""
    radius = 2
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (grid[None, :] / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 5)
    b, c, h, w = x.shape
    out = x.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"),
                   k[:, None, None, :], groups=b * c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"),
                   k[:, None, :, None], groups=b * c)
    return out.reshape(b, c, h, w)


def augment(x: torch.Tensor, views: Views, generator: torch.Generator) -> torch.Tensor:
    """One random view of each normalised crop of ``x`` (B, 1, S, S)."""
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    zoom = uniform(1 - views.scale, 1 + views.scale)
    flip = torch.where(torch.rand(b, generator=generator) < views.flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = flip / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = uniform(-2 * views.shift, 2 * views.shift)  # grid units: 2 = the side
    theta[:, 1, 2] = uniform(-2 * views.shift, 2 * views.shift)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    low = out.amin(dim=(1, 2, 3), keepdim=True)
    high = out.amax(dim=(1, 2, 3), keepdim=True)
    unit = (out - low) / (high - low).clamp(min=1e-6)
    gamma = torch.exp(uniform(-views.gamma, views.gamma))[:, None, None, None]
    out = unit.clamp(min=0) ** gamma
    out = (out - out.mean(dim=(1, 2, 3), keepdim=True)) / \
        out.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    out = out * uniform(1 - views.contrast, 1 + views.contrast)[:, None, None, None] + \
        uniform(-views.brightness, views.brightness)[:, None, None, None]
    out = _blur(out, uniform(0.0, views.blur))
    sd = uniform(0.0, views.noise)[:, None, None, None]
    return out + sd * torch.randn(out.shape, generator=generator)


def features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet's pooled features (B, 512) of one-channel crops."""
    x = x.expand(-1, 3, -1, -1)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


@dataclass
class FitRecord:
    losses: list[float]  # mean NT-Xent loss per epoch
    seconds: float
    images_per_second: float


def fit(crops: torch.Tensor, epochs: int, batch_size: int, lr: float, temperature: float,
        seed: int, views: Views = Views(), bf16: bool = False,
        log=print) -> tuple[torch.nn.Module, FitRecord]:
    """SimCLR on the normalised crops (N, 1, S, S): a ResNet18 from scratch and lightly's
    projection head (512 -> 512 -> 128) and NT-Xent loss; Adam, cosine-annealed. Returns the
    ResNet18 (its ``fc`` untouched: the classifier replaces it) and the losses."""
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    if len(crops) < 2 * batch_size:
        batch_size = max(2, len(crops) // 2)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    head = SimCLRProjectionHead(512, 512, 128)
    criterion = NTXentLoss(temperature=temperature)
    params = [*net.parameters(), *head.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=1e-6)
    steps_per_epoch = len(crops) // batch_size  # a last partial batch dropped (BatchNorm)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser,
                                                          T_max=max(1, epochs * steps_per_epoch))
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(seed)
    losses, start = [], time.perf_counter()
    for epoch in range(epochs):
        net.train()
        head.train()
        order = torch.from_numpy(rng.permutation(len(crops)))
        total, began = 0.0, time.perf_counter()
        for step in range(steps_per_epoch):
            batch = crops[order[step * batch_size:(step + 1) * batch_size]]
            a, b = augment(batch, views, generator), augment(batch, views, generator)
            both = torch.cat([a, b])
            if bf16:
                both = both.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                z = head(features(net, both))
            za, zb = z.float().chunk(2)
            loss = criterion(za, zb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        mean = total / max(1, steps_per_epoch)
        if not math.isfinite(mean):
            raise FloatingPointError(f"SimCLR loss is {mean} at epoch {epoch + 1}")
        losses.append(round(mean, 4))
        rate = 2 * steps_per_epoch * batch_size / max(time.perf_counter() - began, 1e-9)
        log(f"  epoch {epoch + 1}/{epochs}: NT-Xent {mean:.3f}, {rate:.0f} views/s")
    seconds = time.perf_counter() - start
    rate = 2 * epochs * steps_per_epoch * batch_size / max(seconds, 1e-9)
    return net, FitRecord(losses, round(seconds, 1), round(rate, 1))
