"""What to score: a radiograph file, a folder of them, or a manifest CSV -> input items.

Only metadata is gathered here (paths, ids, THA side, patient id); images are read one batch at
a time later. Every file of a folder is an input, as the prepare stage treats a folder: files
that are not radiographs become error rows, never silently skipped.

A manifest (CSV or Parquet) needs a ``path`` column (relative paths resolve against the
manifest's folder, or ``data_root``); ``image_id``, ``side`` (``L``/``R``: the THA side; blank
for unknown) and ``patient_id`` are optional; any other column (e.g. the covariates of the
sweep's fused risk: ``sex``, ``age``, ``weight_kg``, ``height_m``) is carried with the item.
Without a side (a folder, a bare file, a blank cell) both hips are scored, each its own row.

Patient identifiers are never written in clear: the patient id (manifest column or DICOM
``PatientID``) is written as the salted hash training uses, and where it appears inside a path
or an image id (``dicom/P000012/IMG1.dcm``) it is replaced by that hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom

from hipdisloc.io.file_type import file_kind
from hipdisloc.io.manifest import ManifestError, ManifestIssue, read_table
from hipdisloc.io.radiograph import library_warnings
from hipdisloc.stages.prepare import manifest_from_folder
from hipdisloc.stages.train.fold import patient_hash

MANIFEST_SUFFIXES = {".csv", ".parquet", ".pq"}
UNKNOWN_SIDES = {"", "?", "U", "UNKNOWN", "BOTH", "B"}
MIN_REDACTED_LENGTH = 3  # shorter ids would match inside unrelated names
OWN_COLUMNS = {"path", "image_id", "side", "patient_id", "line"}


@dataclass(frozen=True)
class InputItem:
    file: str  # where to read it
    path: str  # how the outputs name it (relative to the input, patient ids redacted)
    image_id: str  # redacted as ``path`` is
    side: str | None  # "L" / "R" (the THA side) or None: unknown, both hips are scored
    patient: str  # salted hash of the patient id, "" when unknown
    line: int | None = None  # manifest line
    # the manifest row's other cells (covariates for the fused risk), as (column, text) pairs
    columns: tuple[tuple[str, str], ...] = ()


def redact(text: str, patient_id: str | None) -> str:
    """``text`` with the patient id replaced by its salted hash (ids of >= 3 characters)."""
    if not patient_id or len(patient_id) < MIN_REDACTED_LENGTH or patient_id not in text:
        return text
    return text.replace(patient_id, f"patient-{patient_hash(patient_id)}")


def header_patient_id(file: str | Path) -> str | None:
    """The DICOM ``PatientID`` of a file, or None (not DICOM, unreadable, absent)."""
    try:
        if file_kind(file) != "dicom":
            return None
        with library_warnings():  # reading the image records them
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["PatientID"],
                                 force=True)
    except Exception:  # noqa: BLE001 - reading the image reports what is wrong with it
        return None
    return str(ds.get("PatientID", "")) or None


def _item(file: str | Path, shown: str, image_id: str | None, side: str | None,
          patient_id: str | None, line: int | None = None,
          columns: tuple[tuple[str, str], ...] = ()) -> InputItem:
    shown_redacted = redact(shown, patient_id)
    return InputItem(file=str(file), path=shown_redacted,
                     image_id=redact(image_id, patient_id) if image_id else shown_redacted,
                     side=side, patient=patient_hash(patient_id) if patient_id else "",
                     line=line, columns=columns)


def _other_cells(row: dict) -> tuple[tuple[str, str], ...]:
    """A manifest row's cells other than the ones read here, blank ones left out."""
    return tuple((str(k), str(v).strip()) for k, v in row.items()
                 if k not in OWN_COLUMNS and v is not None and not pd.isna(v)
                 and str(v).strip())


def _side(value) -> str | None:
    text = "" if value is None or pd.isna(value) else str(value).strip().upper()
    return None if text in UNKNOWN_SIDES else text


def from_manifest(manifest: str | Path, data_root: str | Path | None = None) -> list[InputItem]:
    """Items of a manifest; problems with the manifest as a whole stop before any work,
    every one listed with its line (:class:`~hipdisloc.io.manifest.ManifestError`)."""
    manifest = Path(manifest)
    df = read_table(manifest)
    issues = []
    if "path" not in df.columns:
        raise ManifestError(manifest, [ManifestIssue(None, "path", "required column missing")])
    for r in df.itertuples(index=False):
        if pd.isna(r.path) or not str(r.path).strip():
            issues.append(ManifestIssue(r.line, "path", "empty"))
    if "side" in df.columns:
        for line, value in zip(df["line"], df["side"], strict=True):
            side = _side(value)
            if side is not None and side not in ("L", "R"):
                issues.append(ManifestIssue(int(line), "side",
                                            f"not L, R or blank (unknown): {value!r}"))
    if "image_id" in df.columns:
        ids = df["image_id"].astype("string").str.strip()
        for line in df.loc[ids.duplicated(keep="first") & ids.notna(), "line"]:
            issues.append(ManifestIssue(int(line), "image_id", "duplicate image_id"))
    if issues:
        raise ManifestError(manifest, issues)
    root = Path(data_root) if data_root else manifest.parent
    repeated = set(df.loc[df["path"].str.strip().duplicated(), "path"].str.strip())
    items = []
    for r in df.to_dict("records"):
        path = str(r["path"]).strip()
        file = Path(path) if Path(path).is_absolute() else root / path
        patient = r.get("patient_id")
        patient = None if patient is None or pd.isna(patient) else str(patient).strip()
        image_id = r.get("image_id")
        image_id = None if image_id is None or pd.isna(image_id) else str(image_id).strip()
        if image_id is None and path in repeated:  # one film, two THAs: one id per row
            image_id = f"{path}#line{r['line']}"
        items.append(_item(file, path, image_id, _side(r.get("side")),
                           patient or header_patient_id(file), int(r["line"]), _other_cells(r)))
    return items


def from_folder(folder: str | Path) -> list[InputItem]:
    """Every file under ``folder`` (sorted; the prepare stage's folder listing), side unknown."""
    listing = manifest_from_folder(folder)
    return [_item(r["file"], r["path"], None, None,
                  None if pd.isna(r["patient_id"]) else str(r["patient_id"]))
            for r in listing.to_dict("records")]


def collect_inputs(path: str | Path, data_root: str | Path | None = None) -> list[InputItem]:
    """A manifest (``.csv``/``.parquet``), a folder, or one radiograph file."""
    path = Path(path)
    if path.is_dir():
        return from_folder(path)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return from_manifest(path, data_root)
    if not path.exists():
        raise FileNotFoundError(f"input={path}: no such file or folder")
    return [_item(path, path.name, None, None, header_patient_id(path))]
