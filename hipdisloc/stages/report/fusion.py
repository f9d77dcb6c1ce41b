"""Image + clinical fusion per fold: a logistic model on the image model's logit and clinical
covariates from the manifest, fitted on the fold's validation images (each once, at real
prevalence; the image model never trained on them) and judged on its test images.

Per fold: the AUC of a clinical-only model (the same covariates, fitted on the same images), of
the image model alone and of the fused model; pooled over the folds' test images with
patient-clustered bootstrap CIs. The fusion never sees a test row before it is judged: fitted
rows and judged rows are the fold's validation and test tables, disjoint by construction.

Covariates are manifest columns by name, plus ``bmi`` (from ``weight_kg`` and ``height_m``) when
the manifest has no ``bmi`` column. Numeric columns are standardised on the fitted rows; text
columns are one-hot coded (the first category seen is the reference); a missing value is
replaced by the fitted rows' median (numeric) or most common value (text), and how many were
replaced is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from hipdisloc.stages.report.statistics import (
    auc,
    brier,
    calibration_slope_intercept,
    clustered_bootstrap_ci,
)

DEFAULT_COVARIATES = ("sex", "age", "bmi")


def by_image(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows indexed by ``image_id`` (one row each): what every function below reads."""
    return manifest.drop_duplicates("image_id").set_index("image_id")


def covariates_of(images: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The named covariates per image of ``images`` (:func:`by_image`); ValueError naming a
    column the manifest lacks."""
    table = images
    if "bmi" in names and "bmi" not in table and {"weight_kg", "height_m"} <= set(table):
        weight = pd.to_numeric(table["weight_kg"], errors="coerce")
        height = pd.to_numeric(table["height_m"], errors="coerce")
        table = table.assign(bmi=weight / height**2)
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"fusion covariates {missing}: not columns of the manifest (bmi needs "
                         "weight_kg and height_m)")
    return table[list(names)]


def encoded_columns(names: Sequence[str], numeric, levels: dict[str, list[str]]) -> list[str]:
    """The model's columns in order: a numeric covariate as itself, a text one as an indicator
    per category but the first (the reference)."""
    out = []
    for name in names:
        out += ([name] if name in numeric else
                [f"{name}={level}" for level in levels[name][1:]])
    return out


@dataclass
class CovariateEncoder:
    """Numeric: standardised; text: one-hot; missing: imputed. Fitted on one table's rows."""

    names: list[str]
    numeric: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # median, mean, sd
    levels: dict[str, list[str]] = field(default_factory=dict)
    fill: dict[str, str] = field(default_factory=dict)
    imputed: dict[str, int] = field(default_factory=dict)

    def fit(self, table: pd.DataFrame) -> CovariateEncoder:
        for name in self.names:
            values = pd.to_numeric(table[name], errors="coerce")
            if values.notna().sum() >= max(1, 0.9 * table[name].notna().sum()):
                filled = values.fillna(values.median())
                self.numeric[name] = (float(values.median()), float(filled.mean()),
                                      float(filled.std(ddof=0)) or 1.0)
            else:
                text = table[name].astype("string")
                self.fill[name] = str(text.mode().iloc[0]) if text.notna().any() else ""
                self.levels[name] = sorted(text.fillna(self.fill[name]).unique())
        return self

    def columns(self) -> list[str]:
        return encoded_columns(self.names, self.numeric, self.levels)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        parts = []
        for name in self.names:
            if name in self.numeric:
                median, mean, sd = self.numeric[name]
                values = pd.to_numeric(table[name], errors="coerce")
                self.imputed[name] = self.imputed.get(name, 0) + int(values.isna().sum())
                parts.append(((values.fillna(median) - mean) / sd).to_numpy(float)[:, None])
            else:
                text = table[name].astype("string")
                self.imputed[name] = self.imputed.get(name, 0) + int(text.isna().sum())
                text = text.fillna(self.fill[name])
                parts.append(np.stack([(text == level).to_numpy(float)
                                       for level in self.levels[name][1:]], 1)
                             if len(self.levels[name]) > 1 else np.zeros((len(table), 0)))
        return np.concatenate(parts, 1) if parts else np.zeros((len(table), 0))


@dataclass
class FusedFold:
    fold: int
    auc_clinical: float
    auc_image: float
    auc_fused: float
    coefficients: dict[str, float]  # of the fused model, per standardised covariate / logit
    intervals: dict[str, tuple[float, float]]  # their 95 % CIs (patient-clustered sandwich)
    test: pd.DataFrame  # image_id, patient, dislocated, image (logit), clinical, fused
    #                     (log-odds), p_image, p_clinical, p_fused (their probabilities)
    imputed: dict[str, int]  # missing values replaced, per covariate (fitted and judged rows)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=1e4, max_iter=1000).fit(x, y)  # (barely) unpenalised


def coefficient_intervals(model: LogisticRegression, x: np.ndarray, y: np.ndarray,
                          clusters: Sequence, z: float = 1.959964) -> list[tuple[float, float]]:
    """95 % CIs of a fitted logistic model's intercept and coefficients (in that order), from
    the sandwich covariance clustered by patient (several images of one patient are not
    independent): H⁻¹ (Σ_g s_g s_gᵀ) H⁻¹ · G/(G − 1), with H the information matrix and s_g the
    score summed over cluster g's rows. NaN bounds when H is singular."""
    design = np.hstack([np.ones((len(x), 1)), x])
    beta = np.r_[model.intercept_, model.coef_[0]]
    p = 1 / (1 + np.exp(-design @ beta))
    information = design.T @ (design * (p * (1 - p))[:, None])
    scores = pd.DataFrame(design * (y - p)[:, None]).groupby(np.asarray(clusters)).sum()
    groups = len(scores)
    try:
        bread = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        return [(float("nan"), float("nan"))] * len(beta)
    meat = scores.to_numpy().T @ scores.to_numpy()
    covariance = bread @ meat @ bread * (groups / max(groups - 1, 1))
    se = np.sqrt(np.clip(np.diag(covariance), 0, None))
    return [(float(b - z * e), float(b + z * e)) for b, e in zip(beta, se, strict=True)]


@dataclass
class FusedModel:
    """The fused logistic model fitted on one table of validation images."""

    encoder: CovariateEncoder  # fitted on those rows
    model: LogisticRegression  # on [image logit, encoded covariates]
    design: np.ndarray  # the fitted rows' [image logit, encoded covariates]
    labels: np.ndarray
    coefficients: dict[str, float]  # intercept, image_logit, encoded columns
    intervals: dict[str, tuple[float, float]]  # their 95 % CIs (patient-clustered sandwich)


def fit_fused(validation: pd.DataFrame, covariates: pd.DataFrame) -> FusedModel:
    """The fused model on ``validation`` (image_id, patient, dislocated, logit); covariates
    from :func:`covariates_of`."""
    rows = covariates.reindex(validation["image_id"])
    encoder = CovariateEncoder(list(covariates.columns)).fit(rows)
    design = np.hstack([validation["logit"].to_numpy(float)[:, None], encoder.transform(rows)])
    labels = validation["dislocated"].to_numpy(int)
    model = fit_logistic(design, labels)
    terms = ["intercept", "image_logit", *encoder.columns()]
    coefficients = dict(zip(terms, [float(model.intercept_[0]), *map(float, model.coef_[0])],
                            strict=True))
    intervals = dict(zip(terms, coefficient_intervals(model, design, labels,
                                                      validation["patient"]), strict=True))
    return FusedModel(encoder, model, design, labels, coefficients, intervals)


def fuse_fold(fold: int, validation: pd.DataFrame, test: pd.DataFrame,
              covariates: pd.DataFrame) -> FusedFold:
    """Fit on ``validation`` (image_id, patient, dislocated, logit), judge on ``test`` (the
    same columns)."""
    fit = fit_fused(validation, covariates)
    image_val, x_val = fit.design[:, :1], fit.design[:, 1:]
    x_test = fit.encoder.transform(covariates.reindex(test["image_id"]))
    image_test = test["logit"].to_numpy(float)[:, None]
    clinical = fit_logistic(x_val, fit.labels)
    image = fit_logistic(image_val, fit.labels)  # Platt scaling: the image model's probability
    design_test = np.hstack([image_test, x_test])
    labels = test["dislocated"].to_numpy(int)
    scores = {"image": image_test[:, 0],
              "clinical": clinical.decision_function(x_test),
              "fused": fit.model.decision_function(design_test)}
    probabilities = {"p_image": image.predict_proba(image_test)[:, 1],
                     "p_clinical": clinical.predict_proba(x_test)[:, 1],
                     "p_fused": fit.model.predict_proba(design_test)[:, 1]}
    table = test[["image_id", "patient", "dislocated"]].assign(**scores, **probabilities)
    return FusedFold(fold, auc(labels, scores["clinical"]), auc(labels, scores["image"]),
                     auc(labels, scores["fused"]), fit.coefficients, fit.intervals, table,
                     dict(fit.encoder.imputed))


def fusion_table(fused: Sequence[FusedFold], oracle: pd.DataFrame | None = None,
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A row per fold and a ``pooled`` row (with patient-clustered bootstrap CIs):
    ``auc_clinical``, ``auc_image``, ``auc_fused``, and ``auc_oracle_full`` (the phantom's
    image + clinical oracle on the same test images) when ``oracle`` (image_id, risk_full)
    is given."""
    rows = []
    for f in fused:
        row = {"fold": str(f.fold), "auc_clinical": f.auc_clinical, "auc_image": f.auc_image,
               "auc_fused": f.auc_fused}
        if oracle is not None:
            risk = oracle.reindex(f.test["image_id"])["risk_full"].to_numpy(float)
            row["auc_oracle_full"] = auc(f.test["dislocated"].to_numpy(int), risk)
        rows.append(row)
    pooled = pd.concat([f.test for f in fused], ignore_index=True)
    labels = pooled["dislocated"].to_numpy(int)
    row = {"fold": "pooled"}
    for kind in ("clinical", "image", "fused"):
        ci = clustered_bootstrap_ci(labels, pooled[kind].to_numpy(float), pooled["patient"],
                                    auc, n_boot=n_boot, seed=seed)
        row.update({f"auc_{kind}": ci.estimate, f"auc_{kind}_lower": ci.lower,
                    f"auc_{kind}_upper": ci.upper})
    if oracle is not None:
        risk = oracle.reindex(pooled["image_id"])["risk_full"].to_numpy(float)
        ci = clustered_bootstrap_ci(labels, risk, pooled["patient"], auc, n_boot=n_boot,
                                    seed=seed)
        row.update({"auc_oracle_full": ci.estimate, "auc_oracle_full_lower": ci.lower,
                    "auc_oracle_full_upper": ci.upper})
    rows.append(row)
    return pd.DataFrame(rows)


def calibration_table(fused: Sequence[FusedFold]) -> pd.DataFrame:
    """How well each model's probabilities (all three fitted on validation images at the real
    prevalence) match the test images: per fold and pooled, per model, the calibration slope
    (1 ideal), calibration-in-the-large (0 ideal), Brier score and mean risk against the share
    observed."""
    rows = []
    parts = [(str(f.fold), f.test) for f in fused]
    parts.append(("pooled", pd.concat([f.test for f in fused], ignore_index=True)))
    for fold, table in parts:
        labels = table["dislocated"].to_numpy(int)
        for kind in ("clinical", "image", "fused"):
            probs = table[f"p_{kind}"].to_numpy(float)
            fit = calibration_slope_intercept(labels, probs)
            rows.append({"fold": fold, "model": kind, "slope": fit.slope,
                         "intercept": fit.intercept, "brier": brier(labels, probs),
                         "mean_risk": float(probs.mean()), "observed": float(labels.mean())})
    return pd.DataFrame(rows)


def tha_scores(test: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Risk per hip from its serial radiographs: per THA of ``test`` (image_id, dislocated,
    logit), the mean logit over its test images and the logit of its first postoperative image
    (earliest ``image_date``), with its label and image count. ``images``: :func:`by_image`."""
    info = images
    missing = [c for c in ("tha_id", "image_date") if c not in info]
    if missing:
        raise ValueError(f"THA-level scores need the manifest's {missing}")
    rows = test.assign(tha_id=info["tha_id"].reindex(test["image_id"]).to_numpy(),
                       image_date=pd.to_datetime(info["image_date"].reindex(test["image_id"])
                                                 .to_numpy(), errors="coerce"))
    rows = rows.sort_values(["tha_id", "image_date"], kind="stable")
    grouped = rows.groupby("tha_id", sort=True)
    return pd.DataFrame({"dislocated": grouped["dislocated"].max(),
                         "images": grouped.size(),
                         "mean_logit": grouped["logit"].mean(),
                         "first_logit": grouped["logit"].first()})


def tha_table(folds: Sequence[tuple[int, pd.DataFrame]], images: pd.DataFrame,
              oracle: pd.DataFrame | None = None) -> pd.DataFrame:
    """THA-level test AUC per fold (mean logit, first image alone) and, on the phantom, the
    image-only oracle per THA (its images' mean ``risk_image_only``)."""
    rows = []
    for fold, test in folds:
        tha = tha_scores(test, images)
        labels = tha["dislocated"].to_numpy(int)
        row = {"fold": str(fold), "thas": len(tha), "images": int(tha["images"].sum()),
               "auc_image_level": auc(test["dislocated"].to_numpy(int),
                                      test["logit"].to_numpy(float)),
               "auc_tha_mean_logit": auc(labels, tha["mean_logit"].to_numpy(float)),
               "auc_tha_first_image": auc(labels, tha["first_logit"].to_numpy(float))}
        if oracle is not None:
            risk = test.assign(risk=oracle["risk_image_only"].reindex(test["image_id"])
                               .to_numpy(float))
            risk["tha_id"] = images["tha_id"].reindex(risk["image_id"]).to_numpy()
            per_tha = risk.groupby("tha_id")["risk"].mean().reindex(tha.index)
            row["auc_tha_oracle"] = auc(labels, per_tha.to_numpy(float))
        rows.append(row)
    return pd.DataFrame(rows)


def tha_survival(images: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per THA of ``scores`` (image_id, and score columns: one value per image): time from
    surgery to dislocation (an event) or to its last radiograph (``followup_years``: censored),
    in years, and the mean of each score column over its images. ValueError naming the
    manifest's missing date columns. ``images``: :func:`by_image`; THAs without usable dates
    are left out (the caller counts them)."""
    info = images
    needed = ["tha_id", "surgery_date", "dislocated", "dislocation_date", "followup_years"]
    missing = [c for c in needed if c not in info]
    if missing:
        raise ValueError(f"survival needs the manifest's {missing}")
    rows = scores.assign(tha_id=info["tha_id"].reindex(scores["image_id"]).to_numpy())
    score_columns = [c for c in scores.columns if c not in ("image_id", "patient", "dislocated")]
    per_tha = rows.groupby("tha_id")[score_columns].mean()
    tha = info.drop_duplicates("tha_id").set_index("tha_id").reindex(per_tha.index)
    surgery = pd.to_datetime(tha["surgery_date"], errors="coerce")
    event = pd.to_numeric(tha["dislocated"], errors="coerce").fillna(0).astype(bool)
    to_event = (pd.to_datetime(tha["dislocation_date"], errors="coerce") - surgery).dt.days
    to_last = pd.to_numeric(tha["followup_years"], errors="coerce") * 365.25
    years = np.where(event, to_event, to_last) / 365.25
    out = per_tha.assign(event=event.to_numpy(), years=years)
    return out[np.isfinite(out["years"]) & (out["years"] > 0)]


def survival_summary(tha: pd.DataFrame, high: np.ndarray,
                     scores: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kaplan–Meier curves of the high- and low-risk THAs (scikit-survival's estimator) and
    Harrell's C of each score column: (curves: group, years, survival; c-indices: score,
    c_index, concordant, discordant)."""
    from sksurv.metrics import concordance_index_censored
    from sksurv.nonparametric import kaplan_meier_estimator

    curves = []
    for name, mask in (("high risk", high), ("low risk", ~high)):
        if mask.sum() == 0:
            continue
        times, survival = kaplan_meier_estimator(tha["event"].to_numpy()[mask],
                                                 tha["years"].to_numpy()[mask])
        curves.append(pd.DataFrame({"group": name, "years": times, "survival": survival,
                                    "thas": int(mask.sum()),
                                    "events": int(tha["event"].to_numpy()[mask].sum())}))
    rows = []
    for score in scores:
        c, concordant, discordant, _, _ = concordance_index_censored(
            tha["event"].to_numpy(), tha["years"].to_numpy(), tha[score].to_numpy(float))
        rows.append({"score": score, "c_index": float(c), "concordant": int(concordant),
                     "discordant": int(discordant)})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(rows)
