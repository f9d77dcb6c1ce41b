"""The prepare stage: manifest (or folder) -> validated cohort, image cache, exclusions, Table 1.

Output folder::

    cache/xx/<hash>.npy   each included image, zero-padded to square, resized (uint16 or uint8)
    prepared.csv          manifest rows of the prepared images + source hash, geometry, cache path
    exclusions.csv        every image not prepared, with its manifest line and the reason
    table1.csv / .md      cohort characteristics by class (a folder: counts only)
    prepare.json          counts (in = prepared + excluded), settings, throughput

Incremental: an image whose source bytes (content hash) and settings are unchanged since the last
run, and whose cache file exists, is not decoded again. Every write is atomic, and each finished
image is appended to ``prepare.journal.jsonl`` as it completes, so a run that is killed resumes
where it stopped (the journal is folded into ``prepared.csv`` at the end).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pydicom
from tqdm import tqdm

from hipdisloc.config import PrepareSettings
from hipdisloc.geometry import square_resize
from hipdisloc.io import cache
from hipdisloc.io.atomic import write_csv, write_text
from hipdisloc.io.file_type import file_kind
from hipdisloc.io.manifest import inclusion_exclusions, load_manifest
from hipdisloc.io.radiograph import RadiographError, library_warnings, read_radiograph
from hipdisloc.stats import table1, table1_unlabelled, to_markdown

# Bump when decoding or geometry changes: it invalidates every cache entry.
# 2: resize before padding (pad offsets in output pixels), LUT-based display pipeline.
READER_VERSION = 3  # 3: files typed by content; DICOM headers screened
EXCLUSION_COLUMNS = ["image_id", "line", "path", "stage", "reason", "detail"]


def cache_key(settings: PrepareSettings) -> str:
    """What a cached image depends on: the reader, the settings that change pixels, and the
    header screen (which decides whether there is an image at all)."""
    key = json.dumps([READER_VERSION, settings.image_size, settings.cache_dtype,
                      settings.apply_voi, asdict(settings.screen)])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PrepareSummary:
    n_in: int
    n_prepared: int
    n_excluded: int
    n_reused: int
    excluded_by_reason: dict
    seconds: float
    images_per_second: float
    labelled: bool

    def reconciles(self) -> bool:
        return self.n_in == self.n_prepared + self.n_excluded


def manifest_from_folder(folder: str | Path) -> pd.DataFrame:
    """An unlabelled manifest of every file under ``folder`` (for ingestion and prediction).

    image_id is the path relative to the folder (unique, suffix included); patient id, sex and
    date come from the DICOM header where there is one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    rows = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        row = {"image_id": rel.as_posix(), "path": rel.as_posix(), "file": str(f),
               "patient_id": pd.NA, "sex": pd.NA, "image_date": pd.NaT}
        try:
            is_dicom = file_kind(f) == "dicom"
        except OSError:
            is_dicom = False  # reading it reports what is wrong
        if is_dicom:
            try:
                with library_warnings():  # reading the image records them
                    ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                row["patient_id"] = str(ds.get("PatientID", "")) or pd.NA
                row["sex"] = str(ds.get("PatientSex", "")) or pd.NA
                row["image_date"] = pd.to_datetime(str(ds.get("StudyDate", "")),
                                                   format="%Y%m%d", errors="coerce")
            except Exception:  # noqa: BLE001 - decoding will report it as an exclusion
                pass
        rows.append(row)
    df = pd.DataFrame(rows, columns=["image_id", "path", "file", "patient_id", "sex",
                                     "image_date"])
    df.insert(1, "line", pd.array([pd.NA] * len(df), dtype="Int64"))
    return df


def _prepare_one(task: tuple[dict, PrepareSettings, str]) -> dict:
    row, settings, out_dir = task
    result = {"image_id": row["image_id"]}
    try:
        if Path(row["file"]).name.startswith("."):
            raise RadiographError(row["file"], "hidden file")
        if not Path(row["file"]).is_file():
            raise RadiographError(row["file"], "file not found")
        source_hash = cache.file_hash(row["file"])
        rel = cache.cache_relpath(row["image_id"])
        previous = row.get("previous")
        if (previous and previous["source_hash"] == source_hash
                and previous["cache_key"] == cache_key(settings)
                and (Path(out_dir) / "cache" / rel).is_file()):
            return {**previous, "status": "reused"}
        radiograph = read_radiograph(row["file"], apply_voi=settings.apply_voi,
                                     screen=settings.screen)
        square, frame = square_resize(radiograph.image, settings.image_size)
        cache.save_atomic(Path(out_dir) / "cache" / rel, cache.encode(square, settings.cache_dtype))
        spacing = radiograph.pixel_spacing_mm
        return {**result, "status": "prepared", "source_hash": source_hash,
                "cache_key": cache_key(settings), "cache_path": f"cache/{rel}",
                "orig_height": frame.height, "orig_width": frame.width,
                "pad_top": frame.pad_top, "pad_left": frame.pad_left, "scale": frame.scale,
                "pixel_spacing_mm": spacing[0] if spacing else float("nan"),
                "photometric": radiograph.photometric or "", "bits_stored": radiograph.bits_stored,
                "read_warnings": " | ".join(radiograph.warnings)}
    except RadiographError as err:
        return {**result, "status": "excluded", "reason": err.reason, "detail": err.detail}
    except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
        return {**result, "status": "excluded", "reason": "unexpected error",
                "detail": f"{type(err).__name__}: {err}"}


GEOMETRY_COLUMNS = ["image_id", "source_hash", "cache_key", "cache_path", "orig_height",
                    "orig_width", "pad_top", "pad_left", "scale", "pixel_spacing_mm",
                    "photometric", "bits_stored", "read_warnings"]
JOURNAL = "prepare.journal.jsonl"


def _previous_rows(out_dir: Path) -> dict[str, dict]:
    """What earlier runs prepared: prepared.csv, then the journal of an interrupted run."""
    rows: dict[str, dict] = {}
    prepared = out_dir / "prepared.csv"
    if prepared.is_file():
        prev = pd.read_csv(prepared, dtype={"image_id": str, "source_hash": str,
                                            "cache_key": str})
        if set(GEOMETRY_COLUMNS) <= set(prev.columns):
            rows = {r["image_id"]: r for r in prev[GEOMETRY_COLUMNS].to_dict("records")}
    journal = out_dir / JOURNAL
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut short
                continue
            rows[entry["image_id"]] = {k: entry.get(k) for k in GEOMETRY_COLUMNS}
    return rows


def _run_journalled(tasks: list, workers: int, journal: Path, progress: bool) -> list[dict]:
    """Run the tasks, appending each prepared image to the journal as soon as it is done."""
    bar = dict(total=len(tasks), desc="prepare", unit="img", disable=not progress)
    results = []
    with open(journal, "a") as log:
        def record(result: dict) -> None:
            results.append(result)
            if result["status"] == "prepared":
                log.write(json.dumps({k: result.get(k) for k in GEOMETRY_COLUMNS}) + "\n")
                log.flush()

        if workers > 1 and len(tasks) > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                for result in tqdm(pool.imap_unordered(_prepare_one, tasks, chunksize=4), **bar):
                    record(result)
        else:
            for task in tqdm(tasks, **bar):
                record(_prepare_one(task))
    return results


def prepare(out_dir: str | Path, settings: PrepareSettings, manifest: str | Path | None = None,
            images: str | Path | None = None, data_root: str | Path | None = None,
            progress: bool = True) -> PrepareSummary:
    """Run the prepare stage on a manifest (labelled cohort) or a folder (unlabelled images)."""
    if (manifest is None) == (images is None):
        raise ValueError("give exactly one of manifest=PATH or images=FOLDER")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labelled = manifest is not None
    df = load_manifest(manifest, data_root) if labelled else manifest_from_folder(images)

    exclusions = []
    if labelled:
        rule = inclusion_exclusions(df, settings.inclusion.min_days_after_surgery,
                                    settings.inclusion.min_days_before_dislocation)
        for r in df[rule.notna()].itertuples():
            exclusions.append({"image_id": r.image_id, "line": r.line, "path": r.path,
                               "stage": "inclusion rule", "reason": rule[r.Index], "detail": ""})
        candidates = df[rule.isna()]
    else:
        candidates = df

    previous = _previous_rows(out)
    tasks = [({"image_id": r["image_id"], "file": r["file"],
               "previous": previous.get(r["image_id"])}, settings, str(out))
             for r in candidates[["image_id", "file"]].to_dict("records")]
    start = time.perf_counter()
    results = _run_journalled(tasks, settings.workers, out / JOURNAL, progress)
    seconds = time.perf_counter() - start

    by_id = candidates.set_index("image_id")
    done = [r for r in results if r["status"] in ("prepared", "reused")]
    for r in results:
        if r["status"] == "excluded":
            row = by_id.loc[r["image_id"]]
            exclusions.append({"image_id": r["image_id"], "line": row["line"],
                               "path": row["path"], "stage": "decode", "reason": r["reason"],
                               "detail": r["detail"]})
    geometry = pd.DataFrame(done).drop(columns=["status"]) if done else pd.DataFrame(
        columns=["image_id"])
    prepared = candidates.drop(columns=["file"]).merge(geometry, on="image_id", how="inner")
    prepared = prepared.sort_values("line" if labelled else "image_id", kind="stable")
    write_csv(prepared, out / "prepared.csv")
    excluded = pd.DataFrame(exclusions, columns=EXCLUSION_COLUMNS)
    write_csv(excluded, out / "exclusions.csv")

    (out / JOURNAL).unlink(missing_ok=True)  # everything it held is in prepared.csv now
    for stale in ("table1.csv", "table1.md"):
        (out / stale).unlink(missing_ok=True)
    if len(prepared):
        t1 = table1(prepared) if labelled else table1_unlabelled(prepared)
        caption = ("Cohort characteristics of the included images, by class." if labelled
                   else "Images prepared from a folder without labels.")
        write_csv(t1, out / "table1.csv")
        write_text(out / "table1.md", f"Table 1. {caption}\n\n" + to_markdown(t1))

    summary = PrepareSummary(
        n_in=len(df), n_prepared=len(prepared), n_excluded=len(excluded),
        n_reused=sum(r["status"] == "reused" for r in results),
        excluded_by_reason=excluded["reason"].value_counts().to_dict(), seconds=seconds,
        images_per_second=len(tasks) / seconds if seconds > 0 else float("nan"),
        labelled=labelled)
    record = {"summary": asdict(summary), "settings": asdict(settings),
              "manifest": str(manifest) if manifest else None,
              "images": str(images) if images else None}
    write_text(out / "prepare.json", json.dumps(record, indent=2, default=str))
    return summary
