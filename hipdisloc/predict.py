"""``python -m hipdisloc.predict input=PATH sweep=SWEEP_DIR out=DIR``: score new radiographs with
a sweep's fold ensemble (risk, spread across folds, calibrated risk, risk class, saliency
overlay per hip). ``mode=export``: the ensemble as TorchScript and ONNX, checked against the
eager model, and its model card.

Exit code: 0 when every file was scored, 1 when some failed (error rows in predictions.csv),
2 when nothing could start (a bad sweep, manifest, box file or argument).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hipdisloc.paths import CONFIG_DIR


def score(cfg: DictConfig, study) -> int:
    from hipdisloc.prediction.batch import PHANTOM_WARNING, PredictSettings, predict
    from hipdisloc.prediction.inputs import collect_inputs

    if cfg.input is None:
        raise ValueError("input=PATH is required (a radiograph, a folder or a manifest CSV)")
    items = collect_inputs(cfg.input, cfg.data_root)
    settings = PredictSettings(
        batch_size=int(cfg.batch_size), saliency=bool(cfg.saliency),
        overlay_size=int(cfg.overlay_size), boxes=cfg.boxes,
        threshold=None if cfg.threshold is None else float(cfg.threshold),
        device=str(cfg.device), progress=bool(cfg.progress))
    s = predict(items, study, cfg.out, settings)
    op = s.operating_point
    print(f"predict -> {s.out_dir}/predictions.csv\n"
          f"  files {s.n_files} = scored {s.n_files - s.n_failed} + failed {s.n_failed}; "
          f"hips scored {s.n_hips}; {s.files_per_second:.2f} files/s\n"
          f"  ensemble of {len(study.folds)} fold(s) from {study.folder}; risk class at "
          f"{op['threshold']:g} on the {op['applies_to']} ({op['source']})\n"
          f"  {study.calibration_note}")
    if study.phantom:
        print(f"  WARNING: {PHANTOM_WARNING}")
    if s.n_failed:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.failed_by_reason.items()))
        print(f"predict: {s.n_failed} of {s.n_files} file(s) failed ({reasons}); see the "
              "status=error rows of predictions.csv", file=sys.stderr)
        return 1
    return 0


def export(cfg: DictConfig, study) -> int:
    from hipdisloc.prediction.export import checks_table, export_ensemble
    from hipdisloc.prediction.model_card import write_model_card

    checks = export_ensemble(study.models, study.crop.crop_size, cfg.out,
                             tuple(cfg.export.formats), float(cfg.export.atol),
                             int(cfg.export.check_batch))
    card_json, card_md = write_model_card(study, cfg.out, checks_table(checks))
    for c in checks:
        print(f"export {c.format} -> {cfg.out}/{c.file}: max |diff| vs eager "
              f"{c.max_abs_diff:.2e} <= {c.atol:g} ({c.runtime})")
    print(f"model card -> {card_md}, {card_json}")
    return 0


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    from hipdisloc.io.manifest import ManifestError
    from hipdisloc.prediction.export import ExportMismatch
    from hipdisloc.prediction.study import load_study

    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    try:
        if cfg.mode not in ("score", "export"):
            raise ValueError(f"mode={cfg.mode}: choose score or export")
        study = load_study(cfg.sweep, cfg.detector, float(cfg.target_sensitivity))
        code = export(cfg, study) if cfg.mode == "export" else score(cfg, study)
    except ExportMismatch as err:
        print(f"predict: export FAILED: {err}", file=sys.stderr)
        sys.exit(1)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        print(f"predict: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
