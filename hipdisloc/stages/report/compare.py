"""Configurations of one sweep compared as a study: ``compare.csv``, ``compare_folds.csv`` and
``compare.md`` in the sweep folder.

Per configuration: the mean and SD over its folds of the validation AUC (each fold's validation
images, each once, as ``validation_predictions.csv`` holds them) and of the test AUC. Against a
baseline configuration (the sweep's first, or ``compare.baseline``): per fold, DeLong's test of
the two test AUCs on the fold's shared test images; over folds, the mean paired difference with
a 95 % CI from a bootstrap that resamples patients within each fold
(:mod:`hipdisloc.stages.report.paired`). And the configuration chosen by mean validation AUC
alone, as nnU-Net's "find best configuration" does; its test figures are read after the choice.
Two configurations that do not share a fold's test images (another seed, another cohort) are
not compared on that fold, and the table says so. ``compare.html`` is the same as a page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.metrics import roc_auc
from hipdisloc.stages.report.document import Section, render_html, render_markdown
from hipdisloc.stages.report.paired import clustered_mean_difference, delong_test

CONFIGURATION_RECORD = "configuration.json"  # the overrides that make a configuration


@dataclass
class FoldScores:
    fold: int
    val_auc: float
    test_auc: float | None  # None: the test images were not read (a tuning trial)
    test: pd.DataFrame | None  # image_id, patient, dislocated, logit


@dataclass
class Configuration:
    name: str  # its folder's name under the sweep folder
    folder: Path
    overrides: list[str]
    folds: dict[int, FoldScores] = field(default_factory=dict)

    def values(self, key: str) -> np.ndarray:
        return np.array([getattr(f, key) for f in self.folds.values()
                         if getattr(f, key) is not None], dtype=float)

    @property
    def tested(self) -> bool:
        return bool(self.folds) and all(f.test_auc is not None for f in self.folds.values())


def validation_auc(fold_dir: Path) -> float:
    """A fold's validation AUC: its selected weights on its validation images, each once."""
    table = pd.read_csv(Path(fold_dir) / "validation_predictions.csv")
    return roc_auc(table["dislocated"].to_numpy(int), table["logit"].to_numpy(float))


def load_configuration(folder: Path) -> Configuration:
    """A configuration's folds that have a validation result (finished or tuning folds)."""
    folder = Path(folder)
    record = folder / CONFIGURATION_RECORD
    overrides = (json.loads(record.read_text()).get("overrides", []) if record.is_file()
                 else [])
    config = Configuration(folder.name, folder, overrides)
    for fold_dir in sorted(folder.glob("fold*"), key=lambda p: (len(p.name), p.name)):
        if not (fold_dir / "validation_predictions.csv").is_file():
            continue
        k = int(fold_dir.name.removeprefix("fold"))
        metrics = fold_dir / "test_metrics.json"
        test_auc, test = None, None
        if metrics.is_file():
            test_auc = float(json.loads(metrics.read_text())["auc"])
            test = pd.read_csv(fold_dir / "predictions.csv", dtype={"image_id": str,
                                                                     "patient": str})
        config.folds[k] = FoldScores(k, validation_auc(fold_dir), test_auc, test)
    return config


def _mean_sd(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def chosen_by_validation(configs: list[Configuration]) -> Configuration:
    """The configuration with the highest mean validation AUC over its folds (the first of
    equals); no test figure is read to choose it."""
    means = [_mean_sd(c.values("val_auc"))[0] for c in configs]
    return configs[int(np.nanargmax(means))]


@dataclass
class Comparison:
    baseline: str
    chosen: str
    table: pd.DataFrame  # one row per configuration
    folds: pd.DataFrame  # one row per configuration and fold (paired with the baseline)
    n_boot: int


def paired_folds(a: Configuration, b: Configuration) -> list[tuple[int, pd.DataFrame | None]]:
    """Per fold both configurations tested: the shared test images (a's and b's logits side
    by side), or None when the two did not test the same images."""
    out = []
    for k in sorted(set(a.folds) & set(b.folds)):
        ta, tb = a.folds[k].test, b.folds[k].test
        if ta is None or tb is None:
            continue
        if set(ta["image_id"]) != set(tb["image_id"]):
            out.append((k, None))
            continue
        merged = ta[["image_id", "patient", "dislocated", "logit"]].merge(
            tb[["image_id", "logit"]], on="image_id", suffixes=("_a", "_b"))
        out.append((k, merged))
    return out


def compare(configs: list[Configuration], baseline: str | None = None, n_boot: int = 2000,
            seed: int = 0) -> Comparison:
    configs = [c for c in configs if c.folds]
    if len(configs) < 2:
        raise ValueError("fewer than two configurations with results: nothing to compare")
    names = [c.name for c in configs]
    if baseline is not None and baseline not in names:
        raise ValueError(f"compare.baseline={baseline!r} is none of this sweep's "
                         f"configurations: {', '.join(names)}")
    base = configs[names.index(baseline)] if baseline is not None else configs[0]
    chosen = chosen_by_validation(configs)
    rows, fold_rows = [], []
    for c in configs:
        val_mean, val_sd = _mean_sd(c.values("val_auc"))
        test_mean, test_sd = _mean_sd(c.values("test_auc"))
        row = {"configuration": c.name, "overrides": " ".join(c.overrides),
               "folds": len(c.folds), "val_auc_mean": val_mean, "val_auc_sd": val_sd,
               "test_auc_mean": test_mean, "test_auc_sd": test_sd,
               "baseline": c is base, "chosen_by_validation": c is chosen,
               "paired_folds": math.nan, "delta_test_auc": math.nan, "delta_ci_low": math.nan,
               "delta_ci_high": math.nan, "folds_delong_p_below_0.05": math.nan,
               "unpaired_folds": ""}
        if c is not base:
            pairs = paired_folds(c, base)
            shared = [(k, m) for k, m in pairs if m is not None]
            row["unpaired_folds"] = " ".join(str(k) for k, m in pairs if m is None)
            significant = 0
            for k, m in shared:
                test = delong_test(m["dislocated"], m["logit_a"], m["logit_b"])
                significant += test.p < 0.05
                fold_rows.append({"configuration": c.name, "baseline": base.name, "fold": k,
                                  "n_images": len(m), "n_positive": int(m["dislocated"].sum()),
                                  "auc": test.auc_a, "auc_baseline": test.auc_b,
                                  "difference": test.difference, "delong_se": test.se,
                                  "delong_z": test.z, "delong_p": test.p})
            if shared:
                diff = clustered_mean_difference(
                    [(m["dislocated"], m["logit_a"], m["logit_b"], m["patient"])
                     for _, m in shared], n_boot=n_boot, seed=seed)
                row.update(paired_folds=len(shared), delta_test_auc=diff.mean,
                           delta_ci_low=diff.low, delta_ci_high=diff.high,
                           **{"folds_delong_p_below_0.05": significant})
        rows.append(row)
    return Comparison(base.name, chosen.name, pd.DataFrame(rows), pd.DataFrame(fold_rows),
                      n_boot)


def _f(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def display_table(c: Comparison) -> pd.DataFrame:
    """The comparison as it is read: one row per configuration, figures as text."""
    rows = []
    for _, r in c.table.iterrows():
        name = r["configuration"] + (" (baseline)" if r["baseline"] else "") + \
            (" — chosen" if r["chosen_by_validation"] else "")
        test = (f"{_f(r['test_auc_mean'])} ± {_f(r['test_auc_sd'])}"
                if math.isfinite(r["test_auc_mean"]) else "not read")
        if r["baseline"]:
            delta, count = "—", "—"
        elif math.isfinite(r["delta_test_auc"]):
            delta = (f"{r['delta_test_auc']:+.3f} ({r['delta_ci_low']:+.3f} to "
                     f"{r['delta_ci_high']:+.3f})")
            count = f"{int(r['folds_delong_p_below_0.05'])} of {int(r['paired_folds'])}"
        else:
            delta, count = "not paired", "—"
        if r["unpaired_folds"]:
            delta += f"; folds {r['unpaired_folds']} test other images, left out"
        rows.append({"configuration": name, "folds": int(r["folds"]),
                     "validation AUC": f"{_f(r['val_auc_mean'])} ± {_f(r['val_auc_sd'])}",
                     "test AUC": test, "Δ test AUC vs baseline (95 % CI)": delta,
                     "folds with DeLong p < 0.05": count})
    return pd.DataFrame(rows)


def comparison_sections(c: Comparison, sweep_dir: Path) -> list[Section]:
    chosen = c.table[c.table["chosen_by_validation"]].iloc[0]
    choice = (f"**Chosen by validation AUC alone: {chosen['configuration']}** (mean "
              f"validation AUC {_f(chosen['val_auc_mean'])}).")
    if math.isfinite(chosen["test_auc_mean"]):
        choice += (f" Its test AUC, read after the choice: {_f(chosen['test_auc_mean'])} ± "
                   f"{_f(chosen['test_auc_sd'])}.")
    overview = Section("Configurations").text(
        f"Sweep `{sweep_dir}`: {len(c.table)} configurations. Validation AUC: each fold's "
        "selected weights on its validation images (each once, real prevalence); test AUC: "
        "Table 2's. Δ: the paired difference of test AUC against the baseline "
        f"(**{c.baseline}**) on each fold's shared test images, averaged over folds; its 95 % "
        f"CI from {c.n_boot} bootstrap resamples of patients within each fold. DeLong: per "
        "fold, the two AUCs on the same test images (two-sided).").table(display_table(c))
    chosen_section = Section("Chosen on validation").text(choice).text(
        "Caveat: the validation images chose each fold's epoch and threshold as well as the "
        "configuration, so the chosen configuration's validation AUC is optimistic; its test "
        "AUC is the estimate to quote. A configuration that looks better on test than the "
        "chosen one was not chosen, and quoting it would choose on test. Confirm the chosen "
        "configuration once on data no choice used (another cohort seed, or a later cohort).")
    sections = [overview, chosen_section]
    if not c.folds.empty:
        per_fold = c.folds.assign(
            **{k: c.folds[k].round(4) for k in ("auc", "auc_baseline", "difference",
                                                "delong_se", "delong_z")},
            delong_p=[("< 0.0001" if p < 1e-4 else f"{p:.4f}") for p in c.folds["delong_p"]])
        sections.append(Section("Per fold").text(
            "DeLong's test per fold (`compare_folds.csv`); each configuration's own Table 2, "
            "Table 3 and report are in its folder.").table(per_fold))
    return sections


def comparison_markdown(c: Comparison, sweep_dir: Path) -> str:
    return render_markdown("Configurations compared", comparison_sections(c, sweep_dir),
                           Path(sweep_dir))


def write_comparison(sweep_dir: Path, configs: list[Configuration],
                     baseline: str | None = None, n_boot: int = 2000,
                     seed: int = 0) -> Comparison:
    sweep_dir = Path(sweep_dir)
    result = compare(configs, baseline, n_boot, seed)
    write_csv(result.table, sweep_dir / "compare.csv")
    write_csv(result.folds, sweep_dir / "compare_folds.csv")
    write_text(sweep_dir / "compare.md", comparison_markdown(result, sweep_dir))
    write_text(sweep_dir / "compare.html",
               render_html("Configurations compared", comparison_sections(result, sweep_dir)))
    return result
