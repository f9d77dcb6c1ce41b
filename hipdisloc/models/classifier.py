"""DislocationClassifier: ResNet18, one logit, BCE weighted for the positive class.

Two stages as the paper (fastai's ``fine_tune``): the head alone with the backbone frozen, then
all layers with discriminative learning rates (a geometric slice from the stem to the head whose
top is picked by an LR finder on the unfrozen model, :mod:`hipdisloc.lr_finder`). Validation
scores each image once (real prevalence) and logs, every epoch, the AUC and the sensitivity and
specificity at ``selection_logit`` (by default the prior-shift threshold, likelihood ratio 1),
for the paper's checkpoint selection rule. Everything is computed on float32 logits, which do
not saturate as sigmoid scores do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from scipy.special import expit

from hipdisloc.metrics import roc_auc, weighted_bce
from hipdisloc.thresholds import sensitivity_specificity, training_log_odds

IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ImageNet ResNet18
# model.pretrained's value for a backbone that the train command's pretrain stage builds
# (hipdisloc.stages.pretrain) and hands to the folds as a path
# (it reads the phantom's truth: the implant's measurements; an upper-bound row, never a default
# of a real study; refused for a manifest cohort)
PRIVILEGED_PHANTOM_GEOMETRY = "privileged_phantom_geometry"
RENAMED = {"phantom_geometry": PRIVILEGED_PHANTOM_GEOMETRY}  # model.pretrained's old values
# model.pretrained's value for a backbone learnt from pixels alone by the train command's
# self_supervised stage (hipdisloc.stages.self_supervised), handed to the folds as a path
SELF_SUPERVISED = "self_supervised"
BUILT_BY_STAGES = (PRIVILEGED_PHANTOM_GEOMETRY, SELF_SUPERVISED)
LAYER_GROUPS = (("conv1", "bn1", "layer1"), ("layer2",), ("layer3",), ("layer4",), ("fc",))
# model.head: fastai's head (what the paper's fastai cnn_learner put on ResNet18) or one
# linear layer on the average pool (torchvision's)
HEADS = ("fastai", "linear")


def imagenet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def check_pretrained(pretrained: str | None) -> None:
    """A renamed value of ``model.pretrained`` refused with its new name."""
    if pretrained in RENAMED:
        raise ValueError(f"model.pretrained={pretrained} is now {RENAMED[pretrained]}: it trains "
                         "the backbone on the phantom's truth (the implant's measurements), so "
                         "its figures are an upper bound, not evidence about the paper's method")


def resolve_pretrained(pretrained: str | None) -> str:
    """``auto`` -> ``imagenet`` when torchvision's file is in the local hub cache, else ``none``
    (the paper used ImageNet weights "when available"); other values unchanged."""
    check_pretrained(pretrained)
    if pretrained == "auto":
        return "imagenet" if imagenet_weights_path().is_file() else "none"
    return "none" if pretrained in (None, "") else str(pretrained)


def pretrained_fallback(pretrained: str | None) -> str | None:
    """What ``auto`` fell back to, in words (None when it did not): said at the start of every
    fold and kept in its ``test_metrics.json``, so that a study never loses ImageNet silently."""
    if pretrained != "auto" or resolve_pretrained(pretrained) != "none":
        return None
    return (f"model.pretrained=auto found no ImageNet ResNet18 weights at "
            f"{imagenet_weights_path()}: the backbone starts from RANDOM weights, not the "
            "paper's ImageNet ones. Use model.pretrained=imagenet to fetch them into the torch "
            "cache (online), or copy the file there.")


def imagenet_state_dict() -> dict:
    """torchvision's ImageNet ResNet18 weights: from the torch hub cache when the file is there,
    else fetched into it the standard way (torchvision's weights enum); offline and absent, a
    FileNotFoundError that says where to put the file."""
    path = imagenet_weights_path()
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:  # what torchvision's weights enum does: into <torch hub>/checkpoints/, hash checked
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except OSError as err:  # URLError, a refused connection, no route: offline
        raise FileNotFoundError(
            f"model.pretrained=imagenet: the ImageNet ResNet18 weights are not on this machine "
            f"({path}) and could not be fetched ({type(err).__name__}: {err}). On a machine "
            f"that is online, fetch them once ({weights.url}) and copy the file to {path} "
            "(or set TORCH_HOME), or pass model.pretrained=/path/to/resnet18.pth") from err


class ConcatPool(torch.nn.Module):
    """Global max and average pool side by side (B, 2C, 1, 1): fastai's concat pool, which
    keeps where a feature peaks as well as how much of it there is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.amax(x, dim=(2, 3), keepdim=True),
                          torch.mean(x, dim=(2, 3), keepdim=True)], 1)


def fastai_head(width: int, hidden: int = 512) -> torch.nn.Sequential:
    """fastai's default head on ``width`` pooled features: BatchNorm, dropout 0.25, linear to
    ``hidden`` (no bias), ReLU, BatchNorm, dropout 0.5, linear to one logit (no bias); linear
    weights Kaiming-normal as fastai initialises them. Its ReLU layer lets the head learn risk
    that is not monotone in a feature (a cup inclined too little or too much)."""
    head = torch.nn.Sequential(
        torch.nn.BatchNorm1d(width), torch.nn.Dropout(0.25),
        torch.nn.Linear(width, hidden, bias=False), torch.nn.ReLU(inplace=True),
        torch.nn.BatchNorm1d(hidden), torch.nn.Dropout(0.5),
        torch.nn.Linear(hidden, 1, bias=False))
    for layer in head:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight)
    return head


def resnet18(pretrained: str = "none", head: str = "linear") -> torch.nn.Module:
    """torchvision ResNet18 with one output; ``pretrained``: auto | imagenet | none | /path.pth;
    ``head``: ``linear`` (one layer on the average pool) or ``fastai`` (:func:`fastai_head` on
    :class:`ConcatPool`: the head the paper's fastai put on its ResNet18).

    ``imagenet`` reads torchvision's file from the local torch hub cache, fetching it there the
    standard way when it is absent and the machine is online (offline: an error that says where
    to put it); ``auto`` uses the file when it is there and never fetches.
    """
    if head not in HEADS:
        raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
    pretrained = resolve_pretrained(pretrained)
    if pretrained in BUILT_BY_STAGES:
        raise ValueError(f"model.pretrained={pretrained} is built by python -m hipdisloc.train "
                         "(its stage writes data_dir/<stage>/backbone.pt); elsewhere give the "
                         "backbone's path")
    net = torchvision.models.resnet18(weights=None)
    if pretrained not in ("none", None, ""):
        path = imagenet_weights_path() if pretrained == "imagenet" else Path(pretrained)
        state = (imagenet_state_dict() if pretrained == "imagenet"
                 else torch.load(path, map_location="cpu", weights_only=True))
        state = state.get("state_dict", state)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, _ = net.load_state_dict(state, strict=False)
        if set(missing) - {"fc.weight", "fc.bias"}:
            raise ValueError(f"{path}: not a ResNet18 state dict (missing {sorted(missing)[:3]})")
    if head == "fastai":
        net.avgpool = ConcatPool()
        net.fc = fastai_head(2 * net.fc.in_features)
    else:
        net.fc = torch.nn.Linear(net.fc.in_features, 1)
    return net


def pooled_features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet's features before its head (B, F): its layers, its pool (average:
    F = 512; :class:`ConcatPool`: 1024), flatten; ``net.fc`` of them is ``net(x)``."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


class DislocationClassifier(pl.LightningModule):
    def __init__(self, pretrained: str = "none", pos_weight: float = 25.0, lr: float = 1e-4,
                 lr_slice_ratio: float = 100.0, selection_logit: float | None = None,
                 channels_last: bool = False, compile: bool = False,
                 schedule: str = "one_cycle", oversample_val: bool = True,
                 head: str = "linear"):
        """``selection_logit``: where validation sensitivity and specificity are read each epoch
        (default: the prior-shift threshold ``ln(pos_weight)`` of a model trained on balanced
        epochs); ``oversample_val``: weigh the validation loss as the paper's oversampled
        validation set would (each class half the weight); ``schedule``: ``one_cycle``
        (fastai's, the paper's) or ``constant``; ``head``: ``linear`` or ``fastai``
        (:func:`resnet18`; ``model.head`` defaults to fastai, this class to linear: what a
        checkpoint saved before the option existed holds);
        ``channels_last``: NHWC weights and inputs (faster convolutions on tensor-core GPUs
        with bf16); ``compile``: ``torch.compile`` the network in place (state dict keys
        unchanged; costs a compilation per process and stage)."""
        super().__init__()
        if selection_logit is None:
            selection_logit = training_log_odds(pos_weight, 0.5)
        self.save_hyperparameters()
        self.net = resnet18(pretrained, head)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()
        self.loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
        self.stage = "head"
        self.backbone_frozen = False  # freeze_backbone(): its forward runs without autograd
        self._outputs: dict[str, list] = {"val": [], "test": []}
        self._train_loss: torch.Tensor | None = None
        self._train_images = 0
        self.last_predictions: dict | None = None
        self.finding_lr = False  # hipdisloc.lr_finder: a plain Adam, no schedule

    # -- stages -----------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Stage 1: only the head learns. The backbone's forward then runs without autograd
        (no graph, no saved activations); its BatchNorm layers stay in training mode, so their
        running statistics follow the crops as in the paper's fastai ``freeze`` (its BatchNorm
        weights, unlike fastai's, stay frozen)."""
        self.stage = "head"
        self.backbone_frozen = True
        for name, p in self.net.named_parameters():
            p.requires_grad = name.startswith("fc.")

    def unfreeze(self) -> None:
        self.stage = "all"
        self.backbone_frozen = False
        for p in self.net.parameters():
            p.requires_grad = True

    def parameter_groups(self, top_lr: float) -> list[dict]:
        """Discriminative learning rates: geometric from top_lr / ratio (stem) to top_lr (head)."""
        lrs = np.geomspace(top_lr / self.hparams.lr_slice_ratio, top_lr, len(LAYER_GROUPS))
        groups = []
        for names, lr in zip(LAYER_GROUPS, lrs, strict=True):
            params = [p for n, p in self.net.named_parameters() if n.split(".")[0] in names]
            groups.append({"params": params, "lr": float(lr)})
        return groups

    def configure_optimizers(self):
        """Adam; with ``one_cycle`` (fastai's ``fine_tune``, which the paper used) the rate of
        each group rises to its peak and anneals over the stage: warm-up over 99 % of the head
        stage, 30 % of the all-layer stage (starting at peak / 5)."""
        trainer = getattr(self, "_trainer", None)
        total = None if trainer is None or self.finding_lr \
            else max(1, int(trainer.estimated_stepping_batches))
        optimizer, cycle = self.optimisation(total)
        if cycle is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": cycle, "interval": "step"}}

    def optimisation(self, total_steps: int | None):
        """(Adam, OneCycleLR or None) as :meth:`configure_optimizers` makes them for a stage of
        ``total_steps`` optimiser steps (None: no schedule); also what a loop without the
        Trainer drives (benchmarks/step_overhead.py)."""
        if self.stage == "head":
            groups = [{"params": list(self.net.fc.parameters()), "lr": self.hparams.lr}]
        else:
            groups = self.parameter_groups(self.hparams.lr)
        optimizer = torch.optim.Adam(groups)
        if self.hparams.schedule != "one_cycle" or total_steps is None:
            return optimizer, None
        head = self.stage == "head"
        cycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in groups], total_steps=int(total_steps),
            pct_start=0.99 if head else 0.3, div_factor=25.0 if head else 5.0)
        return optimizer, cycle

    # -- steps ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of (B, 1 or 3, S, S) images; one channel is repeated to the three the
        network (and ImageNet weights) expect, here on the device rather than in the loader."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.backbone_frozen and self.training:
            with torch.no_grad():  # not inference_mode: the head's backward needs the features
                features = pooled_features(self.net, x)
            return self.net.fc(features).squeeze(1)
        return self.net(x).squeeze(1)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        loss = self.loss_fn(self(x), y)
        self._add_train_loss(loss.detach(), len(y))
        return loss

    # The epoch's training loss, weighted by batch size, summed here on the device (no host
    # sync) and logged once per epoch: what ``self.log(..., on_epoch=True, on_step=False)`` in
    # every step gave, with the same float32 arithmetic, without Lightning's per-call logging
    # work (benchmarks/step_overhead.py: a fixed cost per step).
    def _add_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        if self._train_loss is None:
            self._train_loss = torch.tensor(0.0, dtype=torch.float32, device=loss.device)
        loss = loss if loss.dtype in (torch.float32, torch.float64) else loss.float()
        self._train_loss = self._train_loss + loss * batch_size
        self._train_images += batch_size

    def epoch_train_loss(self) -> torch.Tensor | None:
        """The mean training loss of the images of the current training epoch so far (None
        before its first step): ``train/loss``, which :meth:`on_train_epoch_end` logs."""
        if self._train_loss is None or not self._train_images:
            return None
        return self._train_loss / torch.tensor(self._train_images, device=self._train_loss.device)

    def on_train_epoch_start(self) -> None:
        self._train_loss, self._train_images = None, 0

    def on_train_epoch_end(self) -> None:
        loss = self.epoch_train_loss()
        if loss is not None:
            self.log("train/loss", loss, prog_bar=True, on_epoch=True, on_step=False)

    def _collect(self, batch, stage: str) -> None:
        x, y, pos = batch
        # Scored in float32 even when training runs under bf16-mixed autocast: bf16 logits step
        # by 2^-8 (tied scores) and numpy cannot hold them, and the thresholds chosen on these
        # validation scores must mean the same on predict's float32 scores of new images.
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self(x.float()).float().detach()
        self._outputs[stage].append((logits, y.detach(), pos.detach()))

    def _gathered(self, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, labels, pos = (torch.cat(t) for t in zip(*self._outputs[stage], strict=True))
        self._outputs[stage] = []
        if self.trainer is not None and self.trainer.world_size > 1:
            logits, labels, pos = (self.all_gather(t).flatten() for t in (logits, labels, pos))
        pos = pos.cpu().numpy()
        _, first = np.unique(pos, return_index=True)  # a padded DDP share repeats positions
        return logits.cpu().numpy()[first], labels.cpu().numpy()[first], pos[first]

    def validation_step(self, batch, batch_idx):
        self._collect(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """The epoch's validation metrics, on every image once (the same on every rank: the
        outputs are gathered): AUC, and sensitivity and specificity at ``selection_logit``;
        the loss weighted as the oversampled validation set would be (``oversample_val``)."""
        if not self._outputs["val"]:
            return
        logits, labels, _ = self._gathered("val")
        sensitivity, specificity = sensitivity_specificity(labels, logits,
                                                           self.hparams.selection_logit)
        loss = weighted_bce(labels, logits, self.hparams.pos_weight,
                            balance_classes=self.hparams.oversample_val)
        for name, value in (("auc", roc_auc(labels, logits)), ("sensitivity", sensitivity),
                            ("specificity", specificity), ("loss", loss)):
            self.log(f"val/{name}", float(value), sync_dist=False)

    def test_step(self, batch, batch_idx):
        self._collect(batch, "test")

    def on_test_epoch_end(self) -> None:
        logits, labels, pos = self._gathered("test")
        logits = logits.astype(np.float64)
        self.last_predictions = {"logit": logits, "score": expit(logits),
                                 "label": labels, "position": pos}


def load_selected(checkpoint: str | Path) -> DislocationClassifier:
    """A fold's ``checkpoints/selected.pt`` ({"state_dict", "hparams"}) as a model in eval mode
    on the CPU: no compile, no channels_last, no ImageNet file read (the state dict holds every
    weight); hyperparameters this version does not know are left out."""
    import inspect

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    known = set(inspect.signature(DislocationClassifier.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in dict(saved["hparams"]).items() if k in known}
    hparams.update(pretrained="none", compile=False, channels_last=False)
    model = DislocationClassifier(**hparams)
    model.load_state_dict(saved["state_dict"])
    return model.eval()
