"""``python -m hipdisloc.predict input=PATH sweep=SWEEP_DIR out=DIR``: score new radiographs with
a sweep's fold ensemble (risk, spread across folds, calibrated risk, risk class, saliency
overlay per hip). ``mode=export``: the ensemble as TorchScript and ONNX, checked against the
eager model, and its model card (:mod:`hipdisloc.stages.predict`).

Exit code: 0 when every file was scored, 1 when some failed (error rows in predictions.csv),
2 when nothing could start (a bad sweep, manifest, box file or argument).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.config import PredictCommand, to_settings
from hipdisloc.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    from hipdisloc.io.manifest import ManifestError
    from hipdisloc.stages.predict.export import ExportMismatch
    from hipdisloc.stages.predict.run import export, score
    from hipdisloc.stages.predict.study import load_study

    c: PredictCommand = to_settings(cfg)
    if c.threads:
        import torch

        torch.set_num_threads(c.threads)
    try:
        if c.mode not in ("score", "export"):
            raise ValueError(f"mode={c.mode}: choose score or export")
        study = load_study(c.sweep, c.detector_weights, c.target_sensitivity)
        code = export(c, study) if c.mode == "export" else score(c, study)
    except ExportMismatch as err:
        print(f"predict: export FAILED: {err}", file=sys.stderr)
        sys.exit(1)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        print(f"predict: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
