"""The cohort manifest: schema, validation and the paper's inclusion rules.

A manifest has one row per image (CSV or Parquet). Problems with the manifest as a whole stop the
run before any work, and every one of them is listed with its line and column
(:class:`ManifestError`). Problems of a single image (its file, its dates against the inclusion
rules) are not errors: the image is excluded with a reason and the run goes on.

Line numbers are those a person sees in an editor: the header is line 1, the first row line 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REQUIRED = ["image_id", "patient_id", "tha_id", "path", "side", "sex", "dislocated",
            "surgery_date", "image_date"]
DATES = ["surgery_date", "image_date", "dislocation_date"]
NUMERIC = ["age", "weight_kg", "height_m", "followup_years"]
ALLOWED = {"side": {"L", "R"}, "sex": {"F", "M"}, "dislocated": {"0", "1"}}
# Columns hipdisloc adds to the prepared manifest: a user column of that name would be lost.
RESERVED = {"line", "file", "source_hash", "cache_key", "cache_path", "orig_height", "orig_width",
            "pad_top", "pad_left", "scale", "pixel_spacing_mm", "photometric", "bits_stored"}
LABEL_SPELLINGS = {"0": "0", "1": "1", "0.0": "0", "1.0": "1", "false": "0", "true": "1"}


@dataclass(frozen=True)
class ManifestIssue:
    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return (", ".join(where) + ": " if where else "") + self.message


class ManifestError(ValueError):
    def __init__(self, path: str | Path, issues: list[ManifestIssue]):
        self.path, self.issues = str(path), issues
        listed = "\n".join(f"  - {i}" for i in issues[:200])
        more = f"\n  ... and {len(issues) - 200} more" if len(issues) > 200 else ""
        super().__init__(f"{path}: {len(issues)} problem(s) in the manifest:\n{listed}{more}")


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [ManifestIssue(None, None, "manifest file not found")])
    if path.suffix.lower() in {".parquet", ".pq"}:
        df = pd.read_parquet(path).astype("string")
        df.insert(0, "line", range(2, len(df) + 2))  # row number as a person counts it
    else:
        # Keep blank lines while reading so that 'line' is the line a person sees in an editor.
        df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""],
                         skip_blank_lines=False)
        df.insert(0, "line", range(2, len(df) + 2))
        df = df[df.drop(columns="line").notna().any(axis=1)].reset_index(drop=True)
    df.columns = ["line"] + [str(c).strip() for c in df.columns[1:]]
    return df


def parse_dates(raw: pd.Series) -> pd.Series:
    """ISO 8601 (``2012-05-31``, with an optional time and offset) or DICOM (``20120531``).

    Anything else (``05/31/2012``: day or month first?) is not guessed: it stays NaT and is
    reported. Times are dropped: the inclusion rules count whole days.
    """
    raw = raw.astype("string").str.strip()
    iso = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    dicom = pd.to_datetime(raw.where(raw.str.fullmatch(r"\d{8}", na=False)), errors="coerce",
                           format="%Y%m%d", utc=True)
    return iso.fillna(dicom).dt.tz_localize(None).dt.normalize()


def _bad_values(df: pd.DataFrame, column: str, mask: pd.Series, what: str) -> list[ManifestIssue]:
    return [ManifestIssue(int(line), column, f"{what}: {value!r}")
            for line, value in zip(df.loc[mask, "line"], df.loc[mask, column], strict=True)]


def validate(df: pd.DataFrame) -> tuple[pd.DataFrame, list[ManifestIssue]]:
    """Return the typed manifest and every issue found (empty list: valid)."""
    issues: list[ManifestIssue] = []
    df = df.copy()
    if "line" not in df.columns:
        df.insert(0, "line", range(2, len(df) + 2))
    reserved = [c for c in df.columns[1:] if c in RESERVED]
    if reserved:
        return df, [ManifestIssue(None, c, "column name is reserved by hipdisloc; rename it")
                    for c in reserved]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        return df, [ManifestIssue(None, c, "required column missing") for c in missing]
    if len(df) == 0:
        return df, [ManifestIssue(None, None, "the manifest has no rows")]

    for col in REQUIRED:
        df[col] = df[col].str.strip()
        empty = df[col].isna() | (df[col] == "")
        issues += [ManifestIssue(int(line), col, "empty value") for line in df.loc[empty, "line"]]

    dup = df["image_id"].notna() & df["image_id"].duplicated(keep=False)
    for _, group in df[dup].groupby("image_id"):
        lines = ", ".join(str(x) for x in group["line"])
        issues.append(ManifestIssue(int(group["line"].iloc[0]), "image_id",
                                    f"duplicate image_id on lines {lines}"))

    df["dislocated"] = df["dislocated"].str.lower().map(
        lambda v: LABEL_SPELLINGS.get(v, v) if isinstance(v, str) else v)
    for col, allowed in ALLOWED.items():
        values = df[col].str.upper() if col != "dislocated" else df[col]
        bad = values.notna() & (values != "") & ~values.isin(allowed)
        what = f"must be one of {sorted(allowed)}"
        issues += _bad_values(df, col, bad, what)
        df[col] = values
    df["dislocated"] = pd.to_numeric(df["dislocated"], errors="coerce").astype("Int64")

    for col in DATES:
        if col not in df.columns:  # only the optional dislocation_date can be absent here
            df[col] = pd.NaT
            continue
        raw = df[col].astype("string").str.strip()
        parsed = parse_dates(raw)
        bad = raw.notna() & (raw != "") & parsed.isna()
        issues += _bad_values(df.assign(**{col: raw}), col, bad,
                              "not a date (write YYYY-MM-DD or YYYYMMDD)")
        df[col] = parsed

    for col in NUMERIC:
        if col in df.columns:
            raw = df[col].astype("string").str.strip()
            parsed = pd.to_numeric(raw, errors="coerce")
            bad = raw.notna() & (raw != "") & parsed.isna()
            issues += _bad_values(df.assign(**{col: raw}), col, bad, "not a number")
            df[col] = parsed

    # Dates in order; a dislocated hip needs its dislocation date.
    needs_date = (df["dislocated"] == 1) & df["dislocation_date"].isna()
    issues += [ManifestIssue(int(line), "dislocation_date", "dislocated is 1 but no date")
               for line in df.loc[needs_date, "line"]]
    date_on_normal = (df["dislocated"] == 0) & df["dislocation_date"].notna()
    issues += [ManifestIssue(int(line), "dislocation_date", "dislocated is 0 but a date is given")
               for line in df.loc[date_on_normal, "line"]]
    order = df["dislocation_date"].notna() & (df["dislocation_date"] < df["surgery_date"])
    issues += [ManifestIssue(int(line), "dislocation_date", "dislocation before surgery")
               for line in df.loc[order, "line"]]

    # One value per patient / per THA where the data model says so.
    issues += _conflicts(df, "patient_id", "sex", "patient with two sexes")
    issues += _conflicts(df, "tha_id", "patient_id", "THA belongs to two patients")
    issues += _conflicts(df, "tha_id", "side", "THA on two sides")
    issues += _conflicts(df, "tha_id", "dislocated", "THA with two labels")
    issues += _conflicts(df, "tha_id", "surgery_date", "THA with two surgery dates")
    issues += _conflicts(df, "tha_id", "dislocation_date", "THA with two dislocation dates")
    # A film showing both THAs of a bilateral patient is two rows (two image_ids, one path);
    # two patients on one file would leak across patient-level folds.
    issues += _conflicts(df, "path", "patient_id", "one image file listed for two patients")
    return df, issues


def _conflicts(df: pd.DataFrame, key: str, column: str, what: str) -> list[ManifestIssue]:
    sub = df[df[key].notna() & df[column].notna()]
    counts = sub.groupby(key)[column].nunique()
    out = []
    shown = {"sex", "side", "dislocated"}  # identifiers and dates are not echoed, only lines
    for k in counts[counts > 1].index:
        rows = sub[sub[key] == k].drop_duplicates(column)
        if column in shown:
            values = ", ".join(f"{v} (line {ln})" for v, ln in
                               rows[[column, "line"]].itertuples(index=False))
        else:
            values = "lines " + ", ".join(str(ln) for ln in rows["line"])
        out.append(ManifestIssue(int(rows["line"].iloc[0]), column, f"{what}: {values}"))
    return out


def load_manifest(path: str | Path, data_root: str | Path | None = None) -> pd.DataFrame:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem.

    One row per (radiograph, THA): a film showing both THAs of a bilateral patient is two rows
    with distinct ``image_id`` and the same ``path``. Relative image paths are resolved against
    ``data_root`` (default: the manifest's folder) into the column ``file``.
    """
    path = Path(path)
    df, issues = validate(read_table(path))
    if issues:
        raise ManifestError(path, issues)
    root = Path(data_root) if data_root else path.parent
    df["file"] = [str(p if Path(p).is_absolute() else root / p) for p in df["path"]]
    return df


def inclusion_exclusions(df: pd.DataFrame, min_days_after_surgery: int = 1,
                         min_days_before_dislocation: int = 1) -> pd.Series:
    """The paper's inclusion rules: the reason each image is excluded, or <NA> when included.

    Images are kept when taken >= ``min_days_after_surgery`` days after the surgery and, for hips
    that dislocated, >= ``min_days_before_dislocation`` days before the dislocation.
    """
    reasons = pd.Series(pd.NA, index=df.index, dtype="string")
    after = df["image_date"] - df["surgery_date"]
    early = after < pd.Timedelta(days=min_days_after_surgery)
    reasons[early] = f"image < {min_days_after_surgery} day(s) after surgery"
    before = df["dislocation_date"] - df["image_date"]
    late = (df["dislocated"] == 1) & (before < pd.Timedelta(days=min_days_before_dislocation))
    reasons[late & reasons.isna()] = (
        f"image < {min_days_before_dislocation} day(s) before the dislocation")
    return reasons
