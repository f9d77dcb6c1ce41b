"""The fast path keeps the scores: each optimisation against the plain computation, on CPU,
with the tolerance stated here (and in docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import torch

from hipdisloc.data.classification import normalise
from hipdisloc.io import cache
from hipdisloc.models.classifier import DislocationClassifier

TOLERANCE = 1e-4  # logits, float32 on CPU


def _images(n: int = 4, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, size, size, generator=g)


def test_one_channel_items_give_the_same_logits_as_three_channel_copies():
    model = DislocationClassifier().eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x), model(x.expand(-1, 3, -1, -1).contiguous()))


def test_channels_last_keeps_the_logits_within_tolerance():
    plain = DislocationClassifier().eval()
    fast = DislocationClassifier(channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    x = _images()
    with torch.no_grad():
        a, b = plain(x), fast(x)
    assert next(fast.net.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a, b, atol=TOLERANCE), (a - b).abs().max()


def test_frozen_backbone_computes_no_backbone_gradients():
    model = DislocationClassifier()
    model.freeze_backbone()
    loss = model.loss_fn(model(_images()), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    loss.backward()
    grads = {n: p.grad for n, p in model.net.named_parameters()}
    assert all(g is None for n, g in grads.items() if not n.startswith("fc."))
    assert grads["fc.weight"] is not None and grads["fc.weight"].abs().sum() > 0


def test_single_pass_normalisation_matches_numpy():
    rng = np.random.default_rng(1)
    image = rng.random((64, 64), dtype=np.float32) ** 3
    reference = (image.astype(np.float64) - image.mean()) / (image.std() + 1e-6)
    out = normalise(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_memory_mapped_and_read_caches_agree(tmp_path):
    image = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    for dtype in ("uint8", "uint16"):
        path = tmp_path / f"{dtype}.npy"
        cache.save_atomic(path, cache.encode(image, dtype))
        mapped, read = cache.load(path, mmap=True), cache.load(path, mmap=False)
        assert isinstance(mapped, np.memmap) and not isinstance(read, np.memmap)
        np.testing.assert_array_equal(cache.decode(np.asarray(mapped)), cache.decode(read))
        assert np.abs(cache.decode(read) - image).max() <= 1 / (2 * np.iinfo(dtype).max) + 1e-7
