"""Sample the phantom cohort as tables: patients, THAs, images and labels (no pixels).

Everything here is a pure function of (settings, seed). Rendering reads these tables; the risk
model lives in :mod:`hipdisloc.phantom.risk`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit

from hipdisloc.phantom.risk import (
    RiskCoefficients,
    clinical_terms,
    image_terms,
    solve_intercept,
)

HEAD_DIAMETERS_MM = np.array([22, 28, 32, 36, 40])
HEAD_DIAMETER_SHARES = np.array([0.06, 0.26, 0.34, 0.28, 0.06])
FIRST_SURGERY = np.datetime64("2000-01-01")
SURGERY_SPAN_DAYS = 18 * 365


@dataclass
class CohortSettings:
    n_patients: int = 200
    prevalence: float = 0.016  # image-level share of images from hips that later dislocated
    bilateral_rate: float = 0.15
    images_per_tha: float = 8.0  # mean radiographs per THA (paper: ~10 per patient)
    # Images that the paper's inclusion rules must exclude (share of THAs that get one):
    same_day_image_rate: float = 0.05  # radiograph on the day of surgery
    post_dislocation_image_rate: float = 0.5  # of dislocated THAs: a radiograph after it
    risk: RiskCoefficients = field(default_factory=RiskCoefficients)


def sample_patients(n: int, rng: np.random.Generator, bilateral_rate: float) -> pd.DataFrame:
    female = rng.random(n) < 0.56
    height = np.where(female, rng.normal(1.62, 0.065, n), rng.normal(1.76, 0.07, n))
    bmi = np.clip(rng.normal(29.5, 5.5, n), 17.0, 55.0)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:06d}" for i in range(n)],
            "sex": np.where(female, "F", "M"),
            "age": np.round(np.clip(rng.normal(66.0, 11.0, n), 30.0, 95.0), 1),
            "height_m": np.round(height, 3),
            "weight_kg": np.round(bmi * height**2, 1),
            "bmi": bmi,
            "bilateral": rng.random(n) < bilateral_rate,
            "first_side": np.where(rng.random(n) < 0.55, "R", "L"),
            "first_surgery": FIRST_SURGERY
            + rng.integers(0, SURGERY_SPAN_DAYS, n).astype("timedelta64[D]"),
            # Anatomy shared by both hips of a patient (never part of the risk model).
            "pelvis_scale": rng.normal(1.0, 0.05, n),
            "native_offset_mm": rng.normal(41.0, 4.0, n),
            "body_width": rng.normal(1.0, 0.07, n),
            "followup_days": np.round(365.25 * rng.gamma(2.0, 2.5, n) + 60).astype(int),
        }
    )


def sample_thas(patients: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for p in patients.itertuples(index=False):
        sides = [p.first_side]
        dates = [p.first_surgery]
        if p.bilateral:
            sides.append("L" if p.first_side == "R" else "R")
            # Staged bilateral THA, or the same day (simultaneous bilateral), within 3 years.
            dates.append(p.first_surgery + np.timedelta64(int(rng.integers(0, 3 * 365)), "D"))
        for side, date in zip(sides, dates, strict=True):
            rows.append((p.patient_id, side, date))
    thas = pd.DataFrame(rows, columns=["patient_id", "side", "surgery_date"])
    n = len(thas)
    thas.insert(0, "tha_id", [f"T{i:06d}" for i in range(n)])
    thas["inclination_deg"] = np.clip(rng.normal(42.0, 8.0, n), 15.0, 70.0)
    thas["anteversion_deg"] = np.clip(rng.normal(16.0, 7.5, n), 1.0, 40.0)
    thas["head_diameter_mm"] = rng.choice(HEAD_DIAMETERS_MM, n, p=HEAD_DIAMETER_SHARES)
    # Outer cup diameter: head + liner + shell, rounded to the 2 mm sizes that ship.
    thas["cup_diameter_mm"] = 2 * np.round((thas["head_diameter_mm"] + rng.uniform(14, 22, n)) / 2)
    thas["offset_mm"] = np.clip(rng.normal(41.0, 5.0, n), 25.0, 58.0)
    thas["latent"] = rng.normal(0.0, 1.0, n)
    return thas


def sample_image_days(
    n_images: int, followup_days: int, rng: np.random.Generator
) -> np.ndarray:
    """Days after surgery of a THA's regular radiographs: one early post-op, the rest spread."""
    first = int(rng.integers(1, 4))
    if n_images == 1:
        return np.array([first])
    later = np.exp(rng.uniform(np.log(30), np.log(max(31, followup_days)), n_images - 1))
    days = np.unique(np.concatenate([[first], np.round(later).astype(int)]))
    while days.size < n_images:  # collisions on the same day: push later ones apart
        days = np.unique(np.concatenate([days, days[-1:] + 1 + rng.integers(1, 30, 1)]))
    return days[:n_images]


def sample_cohort(settings: CohortSettings, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return ``(thas, images, info)``.

    ``thas``: one row per THA with patient columns, implant geometry, risk terms and the label.
    ``images``: one row per radiograph (``kind`` is ``regular`` or an image the inclusion rules
    must exclude: ``same_day`` or ``post_dislocation``), in random order, ids assigned after
    shuffling so that file order carries no label information.
    ``info``: intercept and realised prevalence.
    """
    if settings.n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {settings.n_patients}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A]))
    patients = sample_patients(settings.n_patients, rng, settings.bilateral_rate)
    thas = sample_thas(patients, rng).merge(patients, on="patient_id", how="left")
    coef = settings.risk

    # Follow-up radiographs (label-independent, so the intercept solve is not circular).
    n_regular = 1 + rng.poisson(max(0.0, settings.images_per_tha - 1.0), len(thas))
    image_rows = []
    last_day = np.zeros(len(thas), dtype=int)
    for i, (t, n_img) in enumerate(zip(thas.itertuples(index=False), n_regular, strict=True)):
        days = sample_image_days(int(n_img), int(t.followup_days), rng)
        last_day[i] = days[-1]
        image_rows += [(t.tha_id, int(d), "regular") for d in days]
    thas["n_regular_images"] = n_regular
    thas["followup_years"] = np.round(last_day / 365.25, 2)

    thas["eta_image"] = image_terms(
        thas["inclination_deg"], thas["anteversion_deg"], thas["head_diameter_mm"],
        thas["offset_mm"], coef,
    )
    thas["eta_clinical"] = clinical_terms(thas["sex"] == "F", thas["age"], thas["bmi"], coef)
    latent = coef.latent_sd * thas["latent"].to_numpy()
    eta = thas["eta_image"].to_numpy() + thas["eta_clinical"].to_numpy() + latent
    intercept = solve_intercept(eta, n_regular, settings.prevalence)
    thas["risk"] = expit(intercept + eta)
    thas["dislocated"] = (rng.random(len(thas)) < thas["risk"]).astype(int)

    # Dislocation after the last included radiograph (so included images precede it by >= 1 day).
    gap = rng.integers(2, 366, len(thas))
    thas["dislocation_day"] = np.where(thas["dislocated"] == 1, last_day + gap, -1)

    # Radiographs the inclusion rules must remove.
    same_day = rng.random(len(thas)) < settings.same_day_image_rate
    post = (thas["dislocated"] == 1).to_numpy() & (
        rng.random(len(thas)) < settings.post_dislocation_image_rate
    )
    for t, sd, pd_ in zip(thas.itertuples(index=False), same_day, post, strict=True):
        if sd:
            image_rows.append((t.tha_id, 0, "same_day"))
        if pd_:
            image_rows.append((t.tha_id, int(t.dislocation_day) + int(rng.integers(0, 3)),
                               "post_dislocation"))

    images = pd.DataFrame(image_rows, columns=["tha_id", "day", "kind"])
    images = images.iloc[rng.permutation(len(images))].reset_index(drop=True)
    images.insert(0, "image_id", [f"IMG{i:07d}" for i in range(len(images))])
    images = images.merge(thas, on="tha_id", how="left")
    images["image_date"] = images["surgery_date"] + images["day"].astype("timedelta64[D]")
    images["dislocation_date"] = np.where(
        images["dislocated"] == 1,
        images["surgery_date"] + images["dislocation_day"].clip(lower=0).astype("timedelta64[D]"),
        np.datetime64("NaT"),
    ).astype("datetime64[s]")
    # The other hip of a bilateral patient shows an implant once its own surgery is done.
    images = _attach_other_hip(images, thas)

    included = images["kind"] == "regular"
    realised = float(images.loc[included, "dislocated"].mean())
    info = {"intercept": intercept, "prevalence_target": settings.prevalence,
            "prevalence_realised": realised}
    return thas, images, info


def _attach_other_hip(images: pd.DataFrame, thas: pd.DataFrame) -> pd.DataFrame:
    """Add ``other_tha`` (the contralateral THA of a bilateral patient, if any) per image."""
    pairs = thas[["patient_id", "tha_id"]].merge(
        thas[["patient_id", "tha_id"]], on="patient_id", suffixes=("", "_other")
    )
    pairs = pairs[pairs["tha_id"] != pairs["tha_id_other"]][["tha_id", "tha_id_other"]]
    images = images.merge(pairs.rename(columns={"tha_id_other": "other_tha"}), on="tha_id",
                          how="left")
    other_date = thas.set_index("tha_id")["surgery_date"]
    images["other_implanted"] = images["other_tha"].notna() & (
        images["other_tha"].map(other_date) <= images["image_date"]
    )
    return images.sort_values("image_id").reset_index(drop=True)
