"""Generate a synthetic THA cohort on disk: DICOM radiographs, manifest, boxes, masks, oracle.

Layout of ``out_dir``::

    manifest.csv       cohort manifest, one row per image (DESIGN.md section 2)
    boxes.json         COCO boxes, one per operated hip, category "hip"
    oracle.csv         per image: true risk (full and image-only), linear predictors, inclusion,
                       and the geometry of the image's THA (what a regressor on the crop targets)
    acquisition.csv    per image: the nuisance variables (photometric, bits, pose, markers...)
    phantom.json       settings, seed, intercept, prevalence and the oracle AUCs
    dicom/<patient>/<image_id>.dcm
    masks/<image_id>.png   implant mask: 0 none, 1 cup, 2 head, 3 stem

Same arguments, same bytes: each image has its own random stream (seed, image index), so the
result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.phantom.anatomy import Implant, render, sample_scene
from hipdisloc.phantom.dicom import write_radiograph
from hipdisloc.phantom.population import CohortSettings, sample_cohort
from hipdisloc.phantom.risk import marginal_image_risk

BITS_STORED_CHOICES = (12, 14, 15, 16)
MONOCHROME1_SHARE = 0.3
MANIFEST_COLUMNS = [
    "image_id", "patient_id", "tha_id", "path", "side", "sex", "dislocated", "surgery_date",
    "image_date", "dislocation_date", "age", "weight_kg", "height_m", "followup_years",
    "bilateral",
]


@dataclass(frozen=True)
class PhantomSummary:
    out_dir: str
    n_patients: int
    n_thas: int
    n_images: int
    n_included_images: int
    prevalence_target: float
    prevalence_included_images: float
    intercept: float
    oracle_auc_image_only: float
    oracle_auc_full: float
    images_per_second: float


def _implant(row, side_prefix: str = "") -> Implant:
    return Implant(
        inclination_deg=float(row[f"{side_prefix}inclination_deg"]),
        anteversion_deg=float(row[f"{side_prefix}anteversion_deg"]),
        head_diameter_mm=float(row[f"{side_prefix}head_diameter_mm"]),
        cup_diameter_mm=float(row[f"{side_prefix}cup_diameter_mm"]),
        offset_mm=float(row[f"{side_prefix}offset_mm"]),
        head_out_of_cup=bool(row.get(f"{side_prefix}head_out_of_cup", False)),
    )


def image_rng(seed: int, image_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x1A6E, image_index]))


def acquisition_of(row: dict, seed: int, image_size: int):
    """The scene and storage choices of one image (no pixels): deterministic per image."""
    rng = image_rng(seed, row["index"])
    implants = {row["side"]: _implant(row)}
    if row.get("other_implanted"):
        implants[row["other_side"]] = _implant(row, "other_")
    scene = sample_scene(rng, image_size, implants, row["pelvis_scale"], row["body_width"],
                         row["native_offset_mm"])
    photometric = "MONOCHROME1" if rng.random() < MONOCHROME1_SHARE else "MONOCHROME2"
    bits = int(rng.choice(BITS_STORED_CHOICES))
    return scene, photometric, bits, rng


def _render_and_write(task: tuple[dict, int, int, str]) -> dict:
    row, seed, image_size, out_dir = task
    scene, photometric, bits, rng = acquisition_of(row, seed, image_size)
    result = render(scene, rng)
    out = Path(out_dir)
    write_radiograph(out / row["path"], result.image, seed=seed, row=pd.Series(row),
                     bits_stored=bits, photometric=photometric, spacing_mm=scene.spacing_mm,
                     burned_in_markers=bool(scene.markers))
    mask_path = out / "masks" / f"{row['image_id']}.png"
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.implant_mask).save(mask_path, optimize=False)
    return {
        "image_id": row["image_id"],
        "width": scene.width,
        "height": scene.height,
        "boxes": result.boxes,
        "acquisition": {
            "image_id": row["image_id"], "photometric": photometric, "bits_stored": bits,
            "width": scene.width, "height": scene.height, "spacing_mm": scene.spacing_mm,
            "rotation_deg": scene.rotation_deg, "exposure_photons": scene.exposure_photons,
            "contrast": scene.contrast, "black_level": scene.black_level, "gamma": scene.gamma,
            "collimated": any(v > 0 for v in scene.collimation),
            "marker_R": any(m[0] == "R" for m in scene.markers),
            "marker_L": any(m[0] == "L" for m in scene.markers),
            "n_gas": len(scene.gas),
        },
    }


GEOMETRY_COLUMNS = ["inclination_deg", "anteversion_deg", "head_diameter_mm", "cup_diameter_mm",
                    "offset_mm"]


def image_table(settings: CohortSettings, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Sample the cohort and lay out one task row per image (paths, both hips' implants)."""
    thas, images, info = sample_cohort(settings, seed)
    images["index"] = np.arange(len(images))
    images["head_out_of_cup"] = images["kind"] == "post_dislocation"
    images["path"] = [f"dicom/{p}/{i}.dcm" for p, i in zip(images["patient_id"],
                                                         images["image_id"], strict=True)]
    other = thas.set_index("tha_id")[GEOMETRY_COLUMNS + ["side"]].add_prefix("other_")
    images = images.join(other, on="other_tha")
    return thas, images, info


def manifest_of(images: pd.DataFrame) -> pd.DataFrame:
    m = images.copy()
    for col in ("surgery_date", "image_date", "dislocation_date"):
        m[col] = pd.to_datetime(m[col]).dt.strftime("%Y-%m-%d")
    m["bilateral"] = m["bilateral"].astype(int)
    return m[MANIFEST_COLUMNS]


def oracle_of(thas: pd.DataFrame, images: pd.DataFrame, intercept: float,
              latent_sd: float) -> pd.DataFrame:
    """Per image: the label and the true risks an oracle would know.

    ``risk_true`` includes the latent term nobody observes; ``risk_full`` is the best a model of
    image + clinical factors can do; ``risk_image_only`` = E[risk | implant geometry] (the
    clinical and latent terms averaged over the cohort) is the best an image-only model can do.
    The last columns (:data:`GEOMETRY_COLUMNS`) are the implant geometry of the image's THA
    (``tha_id``, the operated hip the crop stage crops; ``images`` carries it per row): the
    targets of :mod:`hipdisloc.phantom.recoverability`.
    """
    marginal = marginal_image_risk(
        intercept, thas["eta_image"].to_numpy(), thas["eta_clinical"].to_numpy(),
        latent_sd * thas["latent"].to_numpy(),
    )
    marginal_by_tha = pd.Series(marginal, index=thas["tha_id"])
    eta_full = images["eta_image"] + images["eta_clinical"]
    return pd.DataFrame({
        "image_id": images["image_id"],
        "tha_id": images["tha_id"],
        "included": (images["kind"] == "regular").astype(int),
        "kind": images["kind"],
        "dislocated": images["dislocated"],
        "eta_image": images["eta_image"].round(6),
        "eta_full": eta_full.round(6),
        "risk_image_only": images["tha_id"].map(marginal_by_tha).round(8),
        "risk_full": (1 / (1 + np.exp(-(intercept + eta_full)))).round(8),
        "risk_true": images["risk"].round(8),
        **{c: images[c].round(6) for c in GEOMETRY_COLUMNS},  # the image's own THA's
    })


def coco_of(results: list[dict], images: pd.DataFrame) -> dict:
    by_id = images.set_index("image_id")
    coco = {"info": {"description": "hipdisloc phantom: synthetic, not patient data"},
            "categories": [{"id": 1, "name": "hip"}], "images": [], "annotations": []}
    for n, res in enumerate(sorted(results, key=lambda r: r["image_id"]), start=1):
        # DESIGN.md section 2: file_name matches the manifest's image_id; path is the DICOM.
        coco["images"].append({"id": n, "file_name": res["image_id"],
                               "path": by_id.loc[res["image_id"], "path"],
                               "width": res["width"], "height": res["height"]})
        for side, (x0, y0, x1, y1) in sorted(res["boxes"].items()):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": n, "category_id": 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0, "side": side,
            })
    return coco


OUTPUT_FILES = ("manifest.csv", "boxes.json", "oracle.csv", "acquisition.csv", "phantom.json")
OUTPUT_DIRS = ("dicom", "masks")


def _clear_previous(out: Path, overwrite: bool) -> None:
    """Same arguments, same bytes: files of an earlier cohort must not linger in ``out``."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another out_dir or pass "
                              "overwrite=true to replace the phantom cohort there")
    if not (out / "phantom.json").is_file():
        raise FileExistsError(f"{out} is not empty and holds no phantom cohort "
                              "(no phantom.json); refusing to delete anything there")
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for name in OUTPUT_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


def generate(out_dir: str | Path, settings: CohortSettings, seed: int = 0,
             image_size: int = 512, workers: int = 1, progress: bool = True,
             overwrite: bool = False) -> PhantomSummary:
    out = Path(out_dir)
    _clear_previous(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    thas, images, info = image_table(settings, seed)
    rows = images.to_dict("records")
    tasks = [(r, seed, image_size, str(out)) for r in rows]
    start = time.perf_counter()
    bar = dict(total=len(tasks), desc="phantom", unit="img", disable=not progress)
    if workers > 1:
        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        with ctx.Pool(workers) as pool:
            results = list(tqdm(pool.imap(_render_and_write, tasks, chunksize=8), **bar))
    else:
        results = [_render_and_write(t) for t in tqdm(tasks, **bar)]
    elapsed = time.perf_counter() - start

    write_csv(manifest_of(images), out / "manifest.csv")
    oracle = oracle_of(thas, images, info["intercept"], settings.risk.latent_sd)
    write_csv(oracle, out / "oracle.csv")
    write_csv(pd.DataFrame([r["acquisition"] for r in results]).sort_values("image_id"),
              out / "acquisition.csv", float_format="%.6g")
    write_text(out / "boxes.json", json.dumps(coco_of(results, images), indent=1))

    included = oracle[oracle["included"] == 1]
    has_both = included["dislocated"].nunique() == 2
    summary = PhantomSummary(
        out_dir=str(out),
        n_patients=settings.n_patients,
        n_thas=len(thas),
        n_images=len(images),
        n_included_images=len(included),
        prevalence_target=settings.prevalence,
        prevalence_included_images=float(included["dislocated"].mean()),
        intercept=info["intercept"],
        oracle_auc_image_only=float(roc_auc_score(included["dislocated"], included["eta_image"]))
        if has_both else float("nan"),
        oracle_auc_full=float(roc_auc_score(included["dislocated"], included["eta_full"]))
        if has_both else float("nan"),
        images_per_second=len(images) / max(elapsed, 1e-9),
    )
    record = {"summary": asdict(summary), "seed": seed, "image_size": image_size,
              "settings": asdict(settings),
              "note": "Synthetic phantom cohort. Not patient data; results on it are not "
                      "clinical results."}
    # Timing and location are not part of the cohort's bytes.
    record["summary"].pop("images_per_second")
    record["summary"].pop("out_dir")
    write_text(out / "phantom.json", json.dumps(record, indent=2, default=str))
    return summary
