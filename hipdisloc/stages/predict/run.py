"""What ``python -m hipdisloc.predict`` does once its config is parsed: score radiographs
(``mode=score``) or export the ensemble (``mode=export``), and say so."""

from __future__ import annotations

import sys

from hipdisloc.config import PredictCommand


def score(cfg: PredictCommand, study) -> int:
    """Score ``cfg.input`` with the sweep's ensemble; print what was done. The exit code."""
    from hipdisloc.stages.predict.batch import PHANTOM_WARNING, predict
    from hipdisloc.stages.predict.inputs import collect_inputs

    if cfg.input is None:
        raise ValueError("input=PATH is required (a radiograph, a folder or a manifest CSV)")
    items = collect_inputs(cfg.input, cfg.data_root)
    s = predict(items, study, cfg.out, cfg)
    op = s.operating_point
    print(f"predict -> {s.out_dir}/predictions.csv\n"
          f"  files {s.n_files} = scored {s.n_files - s.n_failed} + failed {s.n_failed}; "
          f"hips with a risk {s.n_hips}, uncertain {s.n_uncertain}"
          + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(s.uncertain_by_reason.items()))
             + ")" if s.n_uncertain else "")
          + f"; {s.files_per_second:.2f} files/s\n"
          f"  ensemble of {len(study.folds)} fold(s) from {study.folder}; risk class at "
          f"{op['threshold']:g} on the {op['applies_to']} ({op['source']})\n"
          f"  {study.calibration_note}\n"
          f"  {study.fusion_note}\n"
          f"  {study.features_note}")
    if study.phantom:
        print(f"  WARNING: {PHANTOM_WARNING}")
    if s.n_failed:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.failed_by_reason.items()))
        print(f"predict: {s.n_failed} of {s.n_files} file(s) failed ({reasons}); see the "
              "status=error rows of predictions.csv", file=sys.stderr)
        return 1
    return 0


def export(cfg: PredictCommand, study) -> int:
    """The ensemble as TorchScript and ONNX, checked, and its model card. The exit code."""
    from hipdisloc.stages.predict.export import checks_table, export_ensemble
    from hipdisloc.stages.predict.model_card import write_model_card

    checks = export_ensemble(study.models, study.crop.crop_size, cfg.out,
                             tuple(cfg.export.formats), cfg.export.atol,
                             cfg.export.check_batch)
    card_json, card_md = write_model_card(study, cfg.out, checks_table(checks))
    for c in checks:
        print(f"export {c.format} -> {cfg.out}/{c.file}: max |diff| vs eager "
              f"{c.max_abs_diff:.2e} <= {c.atol:g} ({c.runtime})")
    print(f"model card -> {card_md}, {card_json}")
    return 0
