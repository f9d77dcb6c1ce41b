"""Manifest validation (every error with line and column) and the inclusion rules."""

from __future__ import annotations

import pandas as pd
import pytest

from hipdisloc.io.manifest import ManifestError, inclusion_exclusions, load_manifest, validate

GOOD = pd.DataFrame({
    "image_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"], "tha_id": ["t1", "t1", "t2"],
    "path": ["a.dcm", "b.dcm", "c.dcm"], "side": ["L", "L", "R"], "sex": ["F", "F", "M"],
    "dislocated": ["0", "0", "1"], "surgery_date": ["2010-01-01", "2010-01-01", "2012-05-05"],
    "image_date": ["2010-01-02", "2011-01-01", "2012-06-01"],
    "dislocation_date": ["", "", "2013-01-01"], "age": ["70", "70", "55.5"],
})


def _issues(df):
    return validate(df.astype("string").replace({"": pd.NA}))[1]


def _write(tmp_path, df):
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def test_a_valid_manifest_loads_typed_with_resolved_paths(tmp_path):
    df = load_manifest(_write(tmp_path, GOOD))
    assert list(df["line"]) == [2, 3, 4]
    assert df["image_date"].dtype.kind == "M" and df["dislocated"].tolist() == [0, 0, 1]
    assert df["file"].iloc[0] == str(tmp_path / "a.dcm")
    assert load_manifest(_write(tmp_path, GOOD), data_root="/archive")["file"].iloc[2] == \
        "/archive/c.dcm"


def test_parquet_manifests_load_too(tmp_path):
    path = tmp_path / "m.parquet"
    GOOD.to_parquet(path)
    assert len(load_manifest(path)) == 3


@pytest.mark.parametrize("column, value, line, message", [
    ("sex", "X", 3, "must be one of ['F', 'M']"),
    ("side", "left", 2, "must be one of ['L', 'R']"),
    ("dislocated", "yes", 2, "must be one of ['0', '1']"),
    ("image_date", "2010-13-45", 3, "not a date"),
    ("image_date", "12/01/2010", 3, "not a date (write YYYY-MM-DD or YYYYMMDD)"),
    ("age", "old", 4, "not a number"),
    ("patient_id", "", 2, "empty value"),
])
def test_bad_values_are_reported_with_line_and_column(column, value, line, message):
    df = GOOD.copy()
    df.loc[line - 2, column] = value
    issues = _issues(df)
    assert any(i.line == line and i.column == column and message in i.message for i in issues), \
        [str(i) for i in issues]


def test_missing_required_column():
    issues = _issues(GOOD.drop(columns=["sex", "tha_id"]))
    assert {(i.column, i.message) for i in issues} == {("sex", "required column missing"),
                                                       ("tha_id", "required column missing")}


def test_duplicates_and_conflicts_name_every_line():
    df = pd.concat([GOOD, GOOD.iloc[[0]]], ignore_index=True)  # 'a' again on line 5
    df.loc[3, "sex"] = "M"  # patient p1 now has two sexes
    issues = [str(i) for i in _issues(df)]
    assert "line 2, column 'image_id': duplicate image_id on lines 2, 5" in issues
    assert "line 2, column 'sex': patient with two sexes: F (line 2), M (line 5)" in issues
    assert not any("p1" in i for i in issues)  # identifiers are not echoed


def test_dates_out_of_order_and_missing_dislocation_date():
    df = GOOD.copy()
    df.loc[2, "dislocation_date"] = "2011-01-01"  # before its surgery (2012-05-05)
    df.loc[0, "dislocated"] = "1"  # a THA with two labels, line 2 without a date
    issues = [str(i) for i in _issues(df)]
    assert "line 4, column 'dislocation_date': dislocation before surgery" in issues
    assert "line 2, column 'dislocation_date': dislocated is 1 but no date" in issues
    assert "line 2, column 'dislocated': THA with two labels: 1 (line 2), 0 (line 3)" in issues


def test_every_problem_is_listed_in_one_error(tmp_path):
    df = GOOD.copy()
    df.loc[0, "sex"] = "?"
    df.loc[1, "image_date"] = "never"
    df.loc[2, "side"] = "B"
    with pytest.raises(ManifestError) as err:
        load_manifest(_write(tmp_path, df))
    assert len(err.value.issues) >= 3
    text = str(err.value)
    assert "manifest.csv" in text and "line 2" in text and "line 3" in text and "line 4" in text


def test_inclusion_rules():
    df = load_frame({
        "image_date": ["2010-01-01", "2010-01-02", "2012-12-31", "2013-01-01"],
        "surgery_date": ["2010-01-01", "2010-01-01", "2012-05-05", "2012-05-05"],
        "dislocated": ["0", "0", "1", "1"],
        "dislocation_date": ["", "", "2013-01-01", "2013-01-01"],
    })
    reasons = inclusion_exclusions(df).tolist()
    assert reasons[0] == "image < 1 day(s) after surgery"
    assert pd.isna(reasons[1]) and pd.isna(reasons[2])
    assert reasons[3] == "image < 1 day(s) before the dislocation"
    assert inclusion_exclusions(df, min_days_after_surgery=0).isna().sum() == 3


def load_frame(columns: dict) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"image_id": [f"i{k}" for k in range(n)], "patient_id": ["p"] * n,
            "tha_id": [f"t{k}" for k in range(n)], "path": ["x"] * n, "side": ["L"] * n,
            "sex": ["F"] * n}
    df, issues = validate(pd.DataFrame({**base, **columns}).astype("string").replace(
        {"": pd.NA}))
    assert issues == []
    return df


def test_dates_iso_dicom_times_and_offsets():
    df = GOOD.copy()
    df.loc[0, "image_date"] = "20100102"  # DICOM DA
    df.loc[1, "image_date"] = "2011-01-01T23:59:00+05:00"  # a time and an offset
    df.loc[1, "surgery_date"] = "2010-01-01 17:00"
    typed, issues = validate(df.astype("string").replace({"": pd.NA}))
    assert issues == []
    assert str(typed.loc[0, "image_date"].date()) == "2010-01-02"
    assert typed.loc[1, "image_date"] == pd.Timestamp("2011-01-01")  # whole days, UTC
    # A surgery at 17:00 and an image the next morning are one day apart: included.
    day_after = load_frame({"surgery_date": ["2010-01-01 17:00"],
                            "image_date": ["2010-01-02 08:00"], "dislocated": ["0"],
                            "dislocation_date": [""]})
    assert inclusion_exclusions(day_after).isna().all()


def test_labels_as_floats_or_booleans_and_blank_lines_keep_line_numbers(tmp_path):
    df = GOOD.copy()
    df["dislocated"] = ["0.0", "False", "1.0"]
    path = tmp_path / "m.csv"
    text = df.to_csv(index=False).splitlines()
    text.insert(2, "")  # a blank line between the first and second rows
    path.write_text("\n".join(text) + "\n")
    typed = load_manifest(path)
    assert typed["dislocated"].tolist() == [0, 0, 1]
    assert typed["line"].tolist() == [2, 4, 5]
    bad = path.read_text().replace("2011-01-01,", "someday,", 1)
    path.write_text(bad)
    with pytest.raises(ManifestError, match="line 4, column 'image_date'"):
        load_manifest(path)


def test_reserved_columns_shared_files_and_two_dislocation_dates():
    issues = [str(i) for i in _issues(GOOD.assign(scale="1"))]
    assert issues == ["column 'scale': column name is reserved by hipdisloc; rename it"]
    df = GOOD.copy()
    df.loc[2, "path"] = "a.dcm"  # patient p2's row points at patient p1's file
    assert any("one image file listed for two patients: lines 2, 4" in str(i)
               for i in _issues(df))
    df = pd.concat([GOOD, GOOD.iloc[[2]].assign(image_id="d", dislocation_date="2014-01-01")])
    assert any("THA with two dislocation dates" in str(i) for i in _issues(df))
