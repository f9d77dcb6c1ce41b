"""Build a sweep's report: ``SWEEP_DIR/report/report.html`` (self-contained) and ``report.md``,
the figures under ``report/figures/`` (and each fold's under ``fold<k>/figures/``), the analysis
tables as CSV, and ``SWEEP_DIR/calibration.json`` (the recalibration ``predict`` applies)."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from hipdisloc.config import ReportSettings
from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.metrics import confusion_metrics
from hipdisloc.stages.report import analysis, figures
from hipdisloc.stages.report.aggregate import aggregate, draws_note, threshold_note
from hipdisloc.stages.report.calibration import FILENAME as CALIBRATION_FILE
from hipdisloc.stages.report.document import Section, render_html, render_markdown
from hipdisloc.stages.report.sweep_data import FoldOutputs, SweepInputs, load_folds, load_inputs

log = logging.getLogger(__name__)

PHANTOM_BANNER = ("SYNTHETIC DATA — these results come from the hipdisloc phantom, a simulated "
                  "THA cohort with a known risk model. They are not clinical results and say "
                  "nothing about real patients.")

SOFTWARE = ("hipdisloc", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core",
            "mmdet", "mmcv", "mmengine", "albumentations", "pydicom", "numpy", "pandas",
            "scikit-learn", "scipy", "captum", "wandb")


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[Path]
    calibration: Path | None
    brier_raw: float | None
    brier_recalibrated: float | None
    saliency_sanity: pd.DataFrame


def _fmt(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = [("n/a" if not np.isfinite(v) else f"{v:.{digits}f}")
                           for v in out[column]]
    return out


def _markdown_to_frame(text: str) -> pd.DataFrame:
    """A table written by tables.table2_markdown/table3_markdown back as a DataFrame (keeps the
    paper's formatting for the HTML)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return pd.DataFrame(rows[2:], columns=rows[0])


def _versions() -> pd.DataFrame:
    rows = [{"package": "python", "version": platform.python_version()}]
    for name in SOFTWARE:
        try:
            rows.append({"package": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            rows.append({"package": name, "version": "not installed"})
    rows.append({"package": "platform", "version": platform.platform()})
    return pd.DataFrame(rows)


# -- sections ---------------------------------------------------------------------------------


def _threshold_rule_text(folds: list[FoldOutputs]) -> str:
    """The decision rule the folds used, in words (from test_metrics.json)."""
    rules = {(f.metrics.get("threshold_rule") or {}).get("description") for f in folds}
    rules.discard(None)
    if not rules:  # a sweep from before per-fold thresholds
        return f"a fixed score {folds[0].threshold:g}"
    return "by " + " / ".join(sorted(rules)) + " on the fold's validation images"


def _selection_section(folds: list[FoldOutputs]) -> Section:
    """Per fold: the decision threshold and what chose it, the epochs the selection rule let
    through, the one it kept, and stage 2's LR range test."""
    section = Section("Decision thresholds and checkpoint selection")
    rows = []
    for f in folds:
        m = f.metrics
        rule = m.get("threshold_rule") or {}
        sel = m.get("selection") or {}
        finder = m.get("lr_finder") or {}
        qualified = "—"
        if f.history is not None and "qualified" in f.history:
            picks = [f"{r.stage[:6]} {int(r.epoch)}" for r in f.history.itertuples()
                     if bool(r.qualified)]
            qualified = ", ".join(picks) if picks else "none"
        rows.append({"fold": f.fold, "threshold (score)": f.threshold,
                     "threshold (risk)": float(m.get("threshold_risk", np.nan)),
                     "validation images": rule.get("n_validation_images", "—"),
                     "validation positives": rule.get("n_validation_positive", "—"),
                     "validation sensitivity": float(rule.get("validation_sensitivity",
                                                              np.nan)),
                     "epochs qualified": qualified,
                     "selected": f"{str(sel.get('stage', '?'))[:6]} {sel.get('epoch', '?')}"
                                 + ("" if sel.get("qualified", True) else " (fallback)"),
                     "LR finder": (f"{finder['suggestion']:.2e}" if finder.get("suggestion")
                                   else "off")})
    section.text(f"Each fold's threshold: {_threshold_rule_text(folds)}, each image once at "
                 "its real prevalence, never on test images; the risk column is "
                 "the same threshold as a real risk (prior shift). An epoch qualifies for the "
                 "selection rule when its validation sensitivity, read at "
                 + ("the prior-shift threshold (likelihood ratio ≥ 1)"
                    if all((f.metrics.get("selection") or {}).get("sensitivity_at",
                                                                  "prior_shift")
                           == "prior_shift" for f in folds) else "score 0.5 (the paper's "
                    "literal rule)")
                 + ", reaches the floor; the kept checkpoint has the highest validation AUC "
                 "among them (the fallback, when none qualifies, the highest AUC overall).")
    section.table(_fmt(pd.DataFrame(rows), 4), "Thresholds, qualifying epochs, selection.")
    curves = {f.fold: pd.read_csv(f.folder / "lr_find.csv") for f in folds
              if (f.folder / "lr_find.csv").is_file()}
    if curves:
        path = figures.save(figures.lr_finder_figure(
            curves, {f.fold: (f.metrics.get("lr_finder") or {}).get("suggestion")
                     for f in folds}), folds[0].folder.parent / "report" / "figures"
            / "lr_finder.png")
        section.figure(path, "Stage 2's LR range test on the unfrozen model (stage-1 weights, "
                       "discriminative slice in place); dots: the suggested top rate.")
    return section

def _cohort_section(inputs: SweepInputs | None, folds: list[FoldOutputs]) -> Section:
    section = Section("Cohort")
    if inputs is None:
        return section.text("The sweep recorded no `inputs.json` (trained before it existed): "
                            "cohort, detector and saliency need `--data-dir`.")
    prepared, crops_dir = inputs.stage("prepared"), inputs.crops_dir
    flow = []
    prep = pd.read_csv(prepared / "prepared.csv") if (prepared / "prepared.csv").is_file() else None
    excl = pd.read_csv(prepared / "exclusions.csv") if (prepared / "exclusions.csv").is_file() \
        else pd.DataFrame(columns=["reason"])
    if prep is not None:
        flow.append({"step": "cohort manifest rows", "images": len(prep) + len(excl)})
        for reason, n in excl["reason"].value_counts().items():
            flow.append({"step": f"↳ excluded at prepare: {reason}", "images": -int(n)})
        flow.append({"step": "prepared", "images": len(prep)})
    crops_csv = crops_dir / "crops.csv"
    if crops_csv.is_file():
        crops = pd.read_csv(crops_csv)
        cropped = crops["crop_path"].fillna("") != ""
        cex = crops_dir / "crop_exclusions.csv"
        cex = pd.read_csv(cex) if cex.is_file() else pd.DataFrame(columns=["reason"])
        for reason, n in cex["reason"].value_counts().items():
            flow.append({"step": f"↳ excluded at crop: {reason}", "images": -int(n)})
        flow.append({"step": "cropped: in the study", "images": int(cropped.sum())})
        flags = crops.loc[cropped, "qc_flags"].fillna("").str.split(";").explode()
        for flag, n in flags[flags != ""].value_counts().items():
            flow.append({"step": f"↳ kept, QC flag: {flag}", "images": int(n)})
    fold_table = folds[0].folder / "fold_table.csv"
    if fold_table.is_file():
        t = pd.read_csv(fold_table)
        flow.append({"step": f"images in folds ({t['patient'].nunique():,} patients, "
                             f"{t['dislocated'].mean():.1%} dislocated)", "images": len(t)})
    section.table(pd.DataFrame(flow), "Flow of radiographs (one row per radiograph and THA).")
    t1 = prepared / "table1.csv"
    if t1.is_file():
        section.table(pd.read_csv(t1).fillna(""), "Table 1: the prepared cohort.")
    return section


def _detector_section(inputs: SweepInputs | None) -> Section:
    section = Section("Detector")
    path = inputs.stage("detector") / "detector_metrics.json" if inputs else None
    if path is None or not path.is_file():
        return section.text("No detector in this sweep (crops from ground-truth boxes, or the "
                            "stage is elsewhere).")
    record = json.loads(path.read_text())
    test = record.get("test", {})
    names = {"test/mAP50_all": "mAP@0.5, all boxes", "test/mAP_all": "COCO mAP@[0.5:0.95]",
             "test/mAP50_left": "mAP@0.5, image left half (patient's right hip)",
             "test/mAP50_right": "mAP@0.5, image right half (patient's left hip)"}
    rows = [{"measure": names.get(k, k), "value": float(v)} for k, v in test.items()]
    images = record.get("images", {})
    model = record.get("config", {}).get("detector", {}).get("model", {})
    section.text(f"YOLOv3 ({model.get('backbone', '?')} backbone) trained on "
                 + ", ".join(f"{images[k]:,} {k}" for k in ("train", "val", "test")
                             if k in images)
                 + " annotated radiographs; metrics on its own test images.")
    return section.table(_fmt(pd.DataFrame(rows)), "Detector test metrics.")


def _fold_figures(fold: FoldOutputs) -> list[Path]:
    out = fold.folder / "figures"
    paths = [figures.save(figures.roc_figure({fold.fold: fold.test},
                                             {fold.fold: fold.metrics.get("auc", np.nan)}),
                          out / "roc.png"),
             figures.save(figures.confusion_figure(
                 {f"fold {fold.fold}": fold.metrics["confusion"]},
                 f"at score ≥ {fold.threshold:.4g}"), out / "confusion.png")]
    if fold.history is not None:
        paths.append(figures.save(figures.loss_figure({fold.fold: fold.history},
                                                      {fold.fold: fold.selected_row}),
                                  out / "loss.png"))
    return paths


def _coefficient_rows(fits: list[tuple[str, dict, dict]]) -> pd.DataFrame:
    """Long table (fold, term, coefficient, lower, upper) of fitted models' coefficients."""
    return pd.DataFrame([{"fold": fold, "term": term, "coefficient": value,
                          "lower": intervals[term][0], "upper": intervals[term][1]}
                         for fold, coefficients, intervals in fits
                         for term, value in coefficients.items()])


def _fusion_section(folds: list[FoldOutputs], inputs: SweepInputs | None,
                    settings: ReportSettings, sweep: Path, out: Path) -> Section | None:
    """Image + clinical fusion per fold and pooled (``report/fusion.csv``), with the fused
    models' coefficients (``report/fusion_coefficients.csv``), and the pooled validation fit
    ``predict`` applies (``SWEEP/fusion.json``)."""
    from hipdisloc.stages.report import fusion as fu
    from hipdisloc.stages.report import fusion_record

    (sweep / fusion_record.FILENAME).unlink(missing_ok=True)  # only this report's, if any
    if not settings.fusion.enabled:
        return None
    section = Section("Beyond the paper: image + clinical fusion")
    # the manifest's rows of every prepared image, whatever the cohort (phantom or archive)
    prepared = inputs.stage("prepared") / "prepared.csv" if inputs is not None else None
    usable = [f for f in folds if f.validation is not None]
    if prepared is None or not prepared.is_file() or not usable:
        section.text("No fusion: " + ("the folds wrote no validation predictions." if not usable
                                      else f"the prepared manifest ({prepared}) is not there."))
        return section
    table = fu.by_image(pd.read_csv(prepared, dtype={"image_id": str}))
    try:
        covariates = fu.covariates_of(table, settings.fusion.covariates)
    except ValueError as err:
        section.text(f"No fusion: {prepared}: {err}.")
        return section
    fused = [fu.fuse_fold(f.fold, f.validation, f.test, covariates) for f in usable]
    imputed = {name: sum(f.imputed.get(name, 0) for f in fused)
               for name in settings.fusion.covariates}
    oracle = None
    oracle_csv = inputs.stage("phantom") / "oracle.csv" if inputs is not None else None
    if inputs is not None and inputs.is_phantom and oracle_csv.is_file():
        oracle = pd.read_csv(oracle_csv, dtype={"image_id": str}).set_index("image_id")
    result = fu.fusion_table(fused, oracle, settings.n_boot, settings.seed)
    write_csv(result, out / "fusion.csv")
    calibration = fu.calibration_table(fused)
    write_csv(calibration, out / "fusion_calibration.csv")
    record = fusion_record.fit_record([(f.fold, f.validation) for f in usable], covariates)
    record.save(sweep / fusion_record.FILENAME)
    coefficients = _coefficient_rows(
        [(str(f.fold), f.coefficients, f.intervals) for f in fused]
        + [("pooled (fusion.json)", record.coefficients, record.intervals)])
    write_csv(coefficients, out / "fusion_coefficients.csv")
    pooled = result.iloc[-1]
    section.text(
        f"A logistic model on each fold's image logit and {', '.join(settings.fusion.covariates)}"
        " (from the manifest; numeric covariates standardised), fitted on the fold's validation "
        "images (each once, real prevalence; the image model never trained on them) and judged "
        "on its test images; the clinical-only model is fitted on the same images. Pooled test "
        f"AUC: clinical only {pooled['auc_clinical']:.3f} "
        f"({pooled['auc_clinical_lower']:.3f}–{pooled['auc_clinical_upper']:.3f}), image only "
        f"{pooled['auc_image']:.3f} ({pooled['auc_image_lower']:.3f}–"
        f"{pooled['auc_image_upper']:.3f}), fused {pooled['auc_fused']:.3f} "
        f"({pooled['auc_fused_lower']:.3f}–{pooled['auc_fused_upper']:.3f}); 95 % CIs from "
        f"{settings.n_boot:,} bootstrap resamples of patients."
        + (f" The phantom's full (image + clinical) oracle on the same images: "
           f"{pooled['auc_oracle_full']:.3f}." if oracle is not None else "")
        + " Missing covariate values replaced by the fitted rows' median or most common value: "
        + (", ".join(f"{name} {n:,}" for name, n in imputed.items() if n) or "none") + "."
        + " A validation set is small: the fused coefficients vary between folds (below), and "
        "the gain is an association on this cohort, not a causal or transportable claim.")
    section.table(_fmt(result[[c for c in result.columns if not c.endswith(("_lower", "_upper"))]]),
                  "Test AUC per fold and pooled (report/fusion.csv also holds the pooled CIs).")
    wide = coefficients.assign(value=[
        f"{r.coefficient:.3f} ({r.lower:.3f} to {r.upper:.3f})" for r in coefficients.itertuples()
    ]).pivot(index="fold", columns="term", values="value")
    section.table(wide.loc[coefficients["fold"].unique(), coefficients["term"].unique()]
                  .reset_index(),
                  "The fused model's coefficients per fold with their 95 % CIs (sandwich "
                  "covariance clustered by patient): log-odds per unit of the image logit, per "
                  "SD of a numeric covariate, against the reference category of a text one. "
                  f"The last row, fitted on the {record.fitted_on}, is what `predict` applies "
                  f"(`{fusion_record.FILENAME}` in the sweep folder: `fused_risk` beside "
                  "`calibrated_risk`).")
    pooled_calibration = calibration[calibration["fold"] == "pooled"]
    section.table(_fmt(pooled_calibration.drop(columns="fold")),
                  "Calibration on the pooled test images of the three models' probabilities "
                  "(each fitted on its fold's validation images): slope (1 ideal), "
                  "calibration-in-the-large (0 ideal), Brier score, mean risk against the share "
                  "observed; per fold in report/fusion_calibration.csv.")
    try:
        tha = fu.tha_table([(f.fold, f.test) for f in usable], table, oracle)
    except ValueError as err:
        section.text(f"No THA-level scores: {err}.")
        return section
    write_csv(tha, out / "tha_level.csv")
    section.text("Risk per hip: each THA's score from its test radiographs, as the mean of their "
                 "logits and as its first postoperative radiograph alone, against whether that "
                 "hip dislocated (report/tha_level.csv)"
                 + ("; on the phantom beside the image-only oracle per THA." if oracle is not None
                    else "."))
    section.table(_fmt(tha), "Test AUC per fold: per image (the paper's figure) and per THA.")
    _survival_blocks(section, fused, usable, table, out)
    return section


def _survival_blocks(section: Section, fused, folds: list[FoldOutputs], manifest: pd.DataFrame,
                     out: Path) -> None:
    """Dislocation-free survival of the test THAs by the image model's risk group at each
    fold's operating point (Kaplan–Meier), and Harrell's C of the image-only and fused risks."""
    import matplotlib.pyplot as plt

    from hipdisloc.stages.report import fusion as fu

    scores = pd.concat([f.test.assign(margin=f.test["image"] - fold.threshold_logit)
                        for f, fold in zip(fused, folds, strict=True)], ignore_index=True)
    try:
        tha = fu.tha_survival(manifest, scores[["image_id", "image", "fused", "margin"]])
    except ValueError as err:
        section.text(f"No survival analysis: {err}.")
        return
    left_out = int(manifest["tha_id"].reindex(scores["image_id"]).nunique()) - len(tha)
    if tha["event"].sum() == 0 or len(tha) < 2:
        section.text("No survival analysis: no test THA dislocated.")
        return
    curves, c_index = fu.survival_summary(tha, tha["margin"].to_numpy() >= 0,
                                          ["image", "fused"])
    write_csv(curves, out / "survival.csv")
    write_csv(c_index, out / "c_index.csv")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, group in curves.groupby("group", sort=False):
        first = group.iloc[0]
        ax.step(np.r_[0.0, group["years"]], np.r_[1.0, group["survival"]], where="post",
                label=f"{name} ({int(first['thas'])} THAs, {int(first['events'])} dislocations)")
    ax.set(xlabel="years after surgery", ylabel="dislocation-free", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    path = figures.save(fig, out / "figures" / "survival.png")
    section.text("Dislocation-free survival of the test THAs (from surgery to dislocation, "
                 "or censored at the last radiograph) by the image model's risk group at each "
                 "fold's operating point (a THA is high risk when the mean of its images' logits "
                 "reaches the fold's threshold); Kaplan–Meier and Harrell's C from "
                 "scikit-survival (report/survival.csv, report/c_index.csv)."
                 + (f" {left_out:,} test THAs without usable dates (surgery, dislocation or "
                    "follow-up) are left out." if left_out else ""))
    section.figure(path, "Kaplan–Meier curves of the high- and low-risk test THAs.")
    section.table(_fmt(c_index), "Harrell's C of the THA-level image-only and fused risks.")


def build_report(sweep_dir: str | Path, settings: ReportSettings | None = None) -> ReportFiles:
    settings = settings if settings is not None else ReportSettings()
    sweep = Path(sweep_dir)
    folds = load_folds(sweep)
    inputs = load_inputs(folds, settings.data_dir)
    tables = aggregate(sweep)
    out = sweep / "report"
    fig_dir = out / "figures"
    rule = _threshold_rule_text(folds)
    prevalence = settings.prevalence or analysis.real_prevalence(folds)
    made: list[Path] = []
    sections: list[Section] = []
    phantom = inputs.is_phantom if inputs else any("phantom_oracle_auc" in f.metrics
                                                   for f in folds)

    about = Section("About this report")
    about.text(f"Sweep `{sweep}`: {len(folds)} fold(s) with results"
               + (f", missing: {', '.join(tables.missing)}" if tables.missing else "")
               + f". Experiment `{inputs.experiment if inputs else '?'}`. Written "
               f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m hipdisloc.report`. "
               f"Real prevalence of dislocation among the images: {prevalence:.2%}. Images are "
               f"called positive at each fold's threshold ({rule}) unless a section says "
               "otherwise.")
    sections += [about, _cohort_section(inputs, folds), _detector_section(inputs)]

    t2 = Section("Table 2: test metrics per fold")
    t2.text(threshold_note(tables.results))
    t2.table(_markdown_to_frame((sweep / "table2.md").read_text()),
             "Per fold, mean and SD (as the paper's Table 2)."
             + (" Oracle AUC: the phantom's image-only risk on the same test images, the "
                "best any model can reach." if phantom else ""))
    t3 = Section("Table 3: male vs female")
    t3.text(draws_note(tables.results))
    t3.table(_markdown_to_frame((sweep / "table3.md").read_text()),
             "Male-only and female-only samples of each fold's non-training images at the "
             "configured prevalence: mean (SD) across folds, paired Wilcoxon P.")
    sections += [t2, t3]

    sections.append(_selection_section(folds))

    ci = analysis.metrics_with_ci(folds, settings.n_boot, settings.seed)
    write_csv(ci, out / "metrics_ci.csv")
    s_ci = Section("Pooled metrics with 95 % confidence intervals")
    s_ci.text(f"All folds' test images pooled (each image once), 95 % percentile intervals from "
              f"{settings.n_boot:,} bootstrap resamples of patients (a patient's images stay "
              "together), beside the per-fold mean ± SD.")
    s_ci.table(_fmt(ci.rename(columns={
        "fold_mean": "per-fold mean", "fold_sd": "per-fold SD", "folds_used": "folds used",
        "pooled": "pooled estimate", "ci_lower": "95 % CI, lower", "ci_upper": "95 % CI, upper",
        "bootstrap_used": "resamples used", "patients": "patients"})),
        "Each image called at its fold's threshold; a resample without a defined value (e.g. "
        "NPV with no negative calls) is left out and counted.")
    sections.append(s_ci)
    fusion = _fusion_section(folds, inputs, settings, sweep, out)
    if fusion is not None:
        sections.append(fusion)

    s_fig = Section("ROC, loss curves, confusion matrices")
    aucs = {f.fold: float(f.metrics.get("auc", np.nan)) for f in folds}
    made.append(figures.save(figures.roc_figure({f.fold: f.test for f in folds}, aucs),
                             fig_dir / "roc.png"))
    s_fig.figure(made[-1], "ROC curves of each fold's test images; the mean curve (vertical "
                 "averaging) with a ± 1 SD band.")
    histories = {f.fold: f.history for f in folds if f.history is not None}
    if histories:
        made.append(figures.save(figures.loss_figure(
            histories, {f.fold: f.selected_row for f in folds}), fig_dir / "loss.png"))
        s_fig.figure(made[-1], "Training and validation loss per epoch (BCE, positive class "
                     "weighted); grey line: the stage boundary; red: the selected checkpoint.")
    test = analysis.pooled_test(folds)
    matrices = {f"fold {f.fold}": f.metrics["confusion"] for f in folds}
    matrices["pooled"] = confusion_metrics(test["dislocated"], test["margin"], 0.0)["confusion"]
    made.append(figures.save(figures.confusion_figure(matrices, "at each fold's threshold"),
                             fig_dir / "confusion.png"))
    s_fig.figure(made[-1], "Confusion matrices of the test images.")
    sections.append(s_fig)
    for f in folds:
        made += _fold_figures(f)

    s_cal = Section("Calibration")
    comparison = analysis.compare_recalibrations(folds, prevalence)
    brier_raw = brier_recal = None
    calibration_path = None
    if comparison is None:
        s_cal.text("The folds wrote no validation predictions (`validation_predictions.csv`): "
                   "retrain with this version to recalibrate.")
    else:
        write_csv(comparison.table, out / "calibration_comparison.csv")
        table = comparison.table.set_index("method")
        brier_raw = float(table.loc["raw score", "brier"])
        brier_recal = float(table.loc["prior shift + Platt", "brier"])
        s_cal.text("Training weights the positive class 25× and oversamples it to half of each "
                   "epoch, so raw scores are far above real risks. Each fold's validation "
                   "images (at the real prevalence, never its test images) fit: a prior shift "
                   f"to the real prevalence ({prevalence:.2%}), then Platt scaling or isotonic "
                   "regression; all are judged on the pooled test images. Calibration slope: 1 "
                   "is ideal, < 1 too extreme; intercept (calibration-in-the-large): 0 is "
                   f"ideal. **Brier score: raw {brier_raw:.4f}, recalibrated (prior shift + "
                   f"Platt) {brier_recal:.4f}.**")
        s_cal.table(_fmt(comparison.table, 4), "Calibration on the pooled test images.")
        made.append(figures.save(figures.reliability_figure(comparison.reliability),
                                 fig_dir / "reliability.png"))
        s_cal.figure(made[-1], "Reliability curves (deciles of predicted probability).")
    sections.append(s_cal)

    s_dec = Section("Decision curve")
    s_ops = Section("Operating points")
    record = analysis.sweep_recalibration(folds, prevalence, settings.target_sensitivities)
    if comparison is not None:
        curve = analysis.decision_curve_table(comparison.probabilities["dislocated"],
                                              comparison.probabilities["platt"], prevalence)
        write_csv(curve, out / "decision_curve.csv")
        made.append(figures.save(figures.decision_curve_figure(curve, prevalence),
                                 fig_dir / "decision_curve.png"))
        s_dec.text("Net benefit of acting on the recalibrated risk (prior shift + Platt, fitted "
                   "per fold on validation images) against acting on everyone or no one, per "
                   "threshold probability.")
        s_dec.figure(made[-1], "Decision curve, pooled test images.")
    else:
        s_dec.text("Needs validation predictions (see Calibration).")
    if record is not None:
        recal, points = record
        ops = pd.DataFrame([
            {"target sensitivity": p.target_sensitivity, "threshold (probability)": p.threshold,
             "validation sensitivity": p.validation["sensitivity"],
             **{f"test {k}": p.test[k] for k in ("sensitivity", "specificity", "ppv", "npv")}}
            for p in points])
        write_csv(ops, out / "operating_points.csv")
        calibration_path = sweep / CALIBRATION_FILE
        write_text(calibration_path, json.dumps(
            {**asdict(recal), "operating_points": [
                {"target_sensitivity": p.target_sensitivity, "threshold": p.threshold,
                 "validation": {k: p.validation[k] for k in ("sensitivity", "specificity",
                                                             "ppv", "npv")},
                 "test": {k: p.test[k] for k in ("sensitivity", "specificity", "ppv", "npv")}}
                for p in points]}, indent=2, default=float))
        s_ops.text(f"Thresholds on the recalibrated probability (prior shift + Platt fitted on "
                   f"the {recal.fitted_on}), chosen on those validation images to reach each "
                   "target sensitivity, and the metrics they give on the pooled test images. "
                   f"`predict` applies this recalibration: `{CALIBRATION_FILE}` (Platt "
                   f"intercept {recal.platt_intercept:.3f}, slope {recal.platt_slope:.3f}).")
        s_ops.table(_fmt(ops), "Operating points.")
    else:
        s_ops.text("Needs validation predictions with both classes.")
    sections += [s_dec, s_ops]

    s_sal = Section("Saliency")
    sanity = pd.DataFrame()
    if settings.saliency and inputs is not None:
        from hipdisloc.stages.report.saliency_examples import saliency_examples, sanity_table

        point = record[1][-1] if record else None

        def threshold_of(fold: FoldOutputs) -> float:
            if point is None:
                return fold.threshold
            # the operating point as a raw-score threshold (the recalibration is increasing)
            grid = np.sort(fold.test["score"].to_numpy())
            called = record[0](grid) >= point.threshold
            return float(grid[called][0]) if called.any() else np.inf

        rows, shares = saliency_examples(folds, inputs, threshold_of, ig_steps=settings.ig_steps)
        if rows:
            from hipdisloc.stages.report.saliency import METHODS
            made.append(figures.save(figures.saliency_figure(rows, METHODS),
                                     fig_dir / "saliency.png"))
            write_csv(shares, out / "saliency_shares.csv")
            sanity = sanity_table(shares)
            s_sal.text("A representative (median-score) true positive and true negative test "
                       "image of each fold"
                       + (f", called at the {point.target_sensitivity:.0%}-sensitivity "
                          "operating point" if point else ", called at the fold's threshold")
                       + ": vanilla gradients (the paper's saliency), Integrated Gradients "
                       "(black baseline) and Grad-CAM on the last residual block.")
            s_sal.figure(made[-1], "Saliency maps overlaid on the crops.")
            if not sanity.empty:
                s_sal.text("Sanity check on the phantom, where the implant mask is known: the "
                           "share of each map's attribution inside the implant (cup, head, "
                           "stem) against the implant's share of the crop. Enrichment 1 means "
                           "the map ignores the implant; the phantom's risk lives in the "
                           "implant's position and size, so a faithful map should be > 1. "
                           "Read with care: Integrated Gradients from a black baseline favours "
                           "bright pixels (the implant is metal-bright), and Grad-CAM on the "
                           "last block has 1/32 of the crop's resolution (2 × 2 cells for a "
                           "64 px crop, 7 × 7 at the paper's 224 px), too coarse to outline an "
                           "implant on small crops.")
                s_sal.table(_fmt(sanity), "Attribution inside the implant mask.")
        else:
            s_sal.text("No example images (no selected weights or crops found).")
    else:
        s_sal.text("Saliency skipped (`--no-saliency`, or no `inputs.json`).")
    sections.append(s_sal)

    s_cfg = Section("Configuration and software")
    if inputs is not None:
        import yaml

        s_cfg.pre(yaml.safe_dump(inputs.config, sort_keys=False), "The resolved configuration.")
    s_cfg.table(_versions(), "Software versions.")
    sections.append(s_cfg)

    title = f"hipdisloc report — {inputs.experiment if inputs else sweep.name}"
    banner = PHANTOM_BANNER if phantom else None
    html_path = write_text(out / "report.html", render_html(title, sections, banner))
    md_path = write_text(out / "report.md", render_markdown(title, sections, out, banner))
    return ReportFiles(html_path, md_path, made, calibration_path, brier_raw, brier_recal,
                       sanity)
