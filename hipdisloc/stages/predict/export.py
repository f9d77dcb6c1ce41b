"""Export the fold ensemble to TorchScript and ONNX, and check both against the eager model.

The exported module is :class:`~hipdisloc.stages.predict.ensemble.FoldEnsemble`: input ``crops``
(B, 1, S, S) float32, normalised crops as training feeds them (per-image mean/std of the
dilated, square ``crop.crop_size`` crop); outputs ``score`` (B,), the mean of the folds'
sigmoid scores, and ``fold_scores`` (B, K). The batch axis is dynamic.

Check: on ``check_batch`` inputs (normalised crops when some are given, else reproducible
Gaussian noise) of a batch size other than the one traced, each exported model's outputs must
match the eager ensemble's within ``atol`` (absolute, on scores in [0, 1]); otherwise
:class:`ExportMismatch` is raised and nothing is reported as exported. ONNX is run with
onnxruntime (a pinned dependency); where it is not installed the check falls back to the
reference evaluator that ships with ``onnx`` and says so.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hipdisloc.stages.predict.ensemble import FoldEnsemble

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "ensemble.torchscript.pt", "onnx": "ensemble.onnx"}
OUTPUTS = ("score", "fold_scores")
OPSET = 17


class ExportMismatch(RuntimeError):
    """An exported model whose scores differ from the eager ensemble's beyond the tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    format: str
    file: str
    runtime: str  # what ran the exported model for the check
    max_abs_diff: float  # over both outputs, against the eager ensemble
    atol: float
    check_batch: int
    ok: bool


def check_inputs(crop_size: int, n: int, crops: np.ndarray | None = None,
                 seed: int = 0) -> torch.Tensor:
    """(n, 1, S, S): the given normalised crops, else Gaussian noise (normalised crops have mean
    0 and SD 1 per image)."""
    if crops is not None:
        return torch.as_tensor(np.asarray(crops, np.float32)).reshape(-1, 1, crop_size,
                                                                      crop_size)[:n]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, crop_size, crop_size, generator=g)


def _diff(expected: tuple[torch.Tensor, ...], got: tuple) -> float:
    return max(float(np.max(np.abs(np.asarray(e.detach()) - np.asarray(g))))
               for e, g in zip(expected, got, strict=True))


def export_torchscript(ensemble: FoldEnsemble, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the constant channel check
        traced = torch.jit.trace(ensemble, example, check_trace=False)
    traced.save(str(path))


def run_torchscript(path: Path, x: torch.Tensor) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return tuple(t.numpy() for t in module(x))


def export_onnx(ensemble: FoldEnsemble, example: torch.Tensor, path: Path) -> None:
    """TorchScript-based ONNX export (opset 17; needs no onnxscript), batch axis dynamic."""
    axes = {"crops": {0: "batch"}, "score": {0: "batch"}, "fold_scores": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice
        torch.onnx.export(ensemble, (example,), str(path), dynamo=False, input_names=["crops"],
                          output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=OPSET)


def run_onnx(path: Path, x: torch.Tensor) -> tuple[tuple, str]:
    """(outputs, runtime name): onnxruntime, else onnx's reference evaluator."""
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return tuple(session.run(list(OUTPUTS), {"crops": x.numpy()})), (
            f"onnxruntime {ort.__version__}")
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    return tuple(evaluator.run(list(OUTPUTS), {"crops": x.numpy()})), (
        f"onnx {onnx.__version__} reference evaluator (onnxruntime not installed)")


def validate_onnx(path: Path) -> None:
    """The ONNX checker on the saved graph (structure and types)."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def export_ensemble(models: list[torch.nn.Module], crop_size: int, out: str | Path,
                    formats: tuple[str, ...] = FORMATS, atol: float = 1e-5,
                    check_batch: int = 4, crops: np.ndarray | None = None) -> list[ExportCheck]:
    """Write the ensemble in each format to ``out`` and check it; raise :class:`ExportMismatch`
    naming every format whose scores differ from eager beyond ``atol``."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    if check_batch < 2:
        raise ValueError("check_batch must be >= 2 (the check uses a batch size other than "
                         "the traced one)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ensemble = FoldEnsemble(models).cpu().eval()
    x = check_inputs(crop_size, check_batch, crops)
    example = x[:1]  # traced at batch 1, checked at check_batch: the batch axis is dynamic
    with torch.no_grad():
        expected = ensemble(x)
    checks = []
    for fmt in formats:
        path = out / FILES[fmt]
        if fmt == "torchscript":
            export_torchscript(ensemble, example, path)
            got, runtime = run_torchscript(path, x), f"torch.jit {torch.__version__}"
        else:
            export_onnx(ensemble, example, path)
            validate_onnx(path)
            got, runtime = run_onnx(path, x)
        diff = _diff(expected, got)
        checks.append(ExportCheck(fmt, path.name, runtime, diff, atol, len(x),
                                  bool(np.isfinite(diff) and diff <= atol)))
    bad = [c for c in checks if not c.ok]
    if bad:
        raise ExportMismatch(
            "exported scores differ from the eager ensemble beyond atol: " + "; ".join(
                f"{c.format} ({c.file}, {c.runtime}): max |diff| {c.max_abs_diff:.3g} > "
                f"{c.atol:g}" for c in bad))
    return checks


def checks_table(checks: list[ExportCheck]) -> list[dict]:
    return [asdict(c) for c in checks]
