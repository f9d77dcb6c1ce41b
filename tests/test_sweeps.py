"""Sweeps of settings, the pure parts: a configuration's folder, the settings by which two runs of
a fold differ, DeLong's paired test, the patient-clustered bootstrap of a mean AUC difference,
and the comparison of configurations with its validation-only choice (on fold folders written
here). The sweeps themselves run in tests/test_orchestration.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from hipdisloc.configurations import (
    configuration_folder,
    fixed_keys,
    job_subdir,
    result_settings,
    setting_differences,
)
from hipdisloc.stages.report.compare import (
    chosen_by_validation,
    load_configuration,
    write_comparison,
)
from hipdisloc.stages.report.paired import (
    clustered_mean_difference,
    delong_test,
    patient_weights,
    weighted_auc,
)
from hipdisloc.stages.train.reuse import StaleFold, check_sweep, fold_state, stale_settings
from hipdisloc.train import normalise_argv

# ---------------------------------------------------------------------------- folders


def test_only_the_overrides_a_sweep_varies_name_its_configurations():
    args = ["experiment=demo", "model.pos_weight=5,25", "fold=0,1", "debug=fast",
            "+extra=1", "hydra/launcher=joblib", "hydra.verbose=true"]
    assert fixed_keys(args) == ["fold", "experiment", "debug", "extra"]
    # the exclusion travels to every job as a Hydra override, added by normalise_argv
    argv = normalise_argv(["t", "experiment=demo", "model.pos_weight=5,25", "fold=0..2", "-m"])
    assert argv[:2] == ["t", "-m"]
    assert argv[-1] == "hydra.job.config.override_dirname.exclude_keys=[fold,experiment]"
    assert normalise_argv(["t", "fold=0..1"]) == ["t", "fold=0,1"]  # a single run: no folders


def test_job_folders():
    assert job_subdir("", 3) == "fold3"  # the paper's sweep: today's layout
    assert job_subdir("model.pos_weight=5", 3) == "model.pos_weight=5/fold3"
    assert job_subdir("model.lr=0.001,model.pos_weight=5", 0) == \
        "model.lr=0.001,model.pos_weight=5/fold0"
    assert job_subdir("model.pretrained=/w/r18.pt", 1) == "model.pretrained=_w_r18.pt/fold1"
    long = "model.lr=" + "1" * 200
    name = configuration_folder(long)
    assert name.startswith("config-") and len(name) < 30 and name == configuration_folder(long)
    assert job_subdir("model.lr=0.001", 0, "hydra_plugins.x.OptunaSweeper") == "model.lr=0.001"


def test_settings_that_change_a_result_and_those_that_do_not():
    before = {"fold": 0, "model": {"lr": 1e-4, "pos_weight": 25.0}, "paths": {"out_dir": "a"},
              "logger": {"wandb": None}, "callbacks": {"skip_finished": True,
                                                       "selection": {"sensitivity_floor": 0.8}},
              "data": {"num_workers": 2, "rotate_deg": 10.0}}
    after = json.loads(json.dumps(before))
    after["paths"]["out_dir"] = "b"
    after["logger"]["wandb"] = {"project": "x"}
    after["callbacks"]["skip_finished"] = False
    after["data"]["num_workers"] = 0
    assert setting_differences(before, after) == []
    after["model"]["lr"] = 3e-4
    after["data"]["rotate_deg"] = 5.0
    after["model"]["head"] = "fastai"  # a key the older record lacks
    assert setting_differences(before, after) == [
        ("data.rotate_deg", 10.0, 5.0), ("model.head", "(not set)", "fastai"),
        ("model.lr", 1e-4, 3e-4)]
    assert "paths.out_dir" not in result_settings(before)


def _fold_record(folder: Path, config: dict, finished: bool = False, started: bool = False):
    folder.mkdir(parents=True)
    (folder / "inputs.json").write_text(json.dumps({"config": config}))
    if finished:
        (folder / "test_metrics.json").write_text("{}")
    if started:
        (folder / "checkpoints" / "stage1_head").mkdir(parents=True)
        (folder / "checkpoints" / "stage1_head" / "last.ckpt").write_bytes(b"x")


def test_stale_folds_are_found_finished_or_started(tmp_path):
    config = {"fold": 0, "model": {"lr": 1e-4}, "callbacks": {"skip_finished": True}}
    other = {"fold": 0, "model": {"lr": 3e-4}, "callbacks": {"skip_finished": True}}
    _fold_record(tmp_path / "done", config, finished=True)
    _fold_record(tmp_path / "half", config, started=True)
    _fold_record(tmp_path / "new", config)  # started, killed before its first epoch
    assert [fold_state(tmp_path / n) for n in ("done", "half", "new")] == \
        ["finished", "started", "empty"]
    assert stale_settings(tmp_path / "done", config) is None
    assert stale_settings(tmp_path / "done", other) == [("model.lr", 1e-4, 3e-4)]
    assert stale_settings(tmp_path / "half", other) == [("model.lr", 1e-4, 3e-4)]
    assert stale_settings(tmp_path / "new", other) is None  # nothing to reuse
    (tmp_path / "done" / "inputs.json").unlink()  # work without a record is never reused
    assert stale_settings(tmp_path / "done", config)[0][0] == "inputs.json"

    from omegaconf import OmegaConf
    with pytest.raises(StaleFold) as err:
        check_sweep([(tmp_path / "half", OmegaConf.create(other)),
                     (tmp_path / "new", OmegaConf.create(other))])
    message = str(err.value)
    assert "1 fold folder(s)" in message and str(tmp_path / "half") in message
    assert "model.lr: 0.0001 there, 0.0003 in this command" in message
    assert "callbacks.skip_finished=false" in message and "name=" in message


# ---------------------------------------------------------------------------- statistics


def naive_delong(y, a, b):
    """DeLong et al. (1988) as written: the kernel psi over every (positive, negative) pair,
    structural components as its row and column means, their covariances."""
    y = np.asarray(y)

    def components(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    v10a, v01a, auc_a = components(np.asarray(a, float))
    v10b, v01b, auc_b = components(np.asarray(b, float))
    m, n = len(v10a), len(v01a)

    def cov(u, v, k):
        return ((u - u.mean()) * (v - v.mean())).sum() / (k - 1)

    var = ((cov(v10a, v10a, m) + cov(v10b, v10b, m) - 2 * cov(v10a, v10b, m)) / m
           + (cov(v01a, v01a, n) + cov(v01b, v01b, n) - 2 * cov(v01a, v01b, n)) / n)
    return auc_a, auc_b, np.sqrt(var)


def test_delong_matches_the_papers_definition_on_fixed_data():
    rng = np.random.default_rng(7)
    y = (rng.random(300) < 0.2).astype(int)
    a = y * 1.5 + rng.normal(size=300)
    b = np.round(y * 0.5 + rng.normal(size=300), 1)  # ties within and across classes
    test = delong_test(y, a, b)
    auc_a, auc_b, se = naive_delong(y, a, b)
    assert test.auc_a == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auc_a)
    assert test.auc_b == pytest.approx(roc_auc_score(y, b)) == pytest.approx(auc_b)
    assert test.se == pytest.approx(se, rel=1e-12)
    assert test.p == pytest.approx(2 * norm.sf(abs((auc_a - auc_b) / se)), rel=1e-9)
    assert 0 < test.p < 0.05  # a genuinely better model on 300 images
    same = delong_test(y, a, 2 * a + 1)  # the same ranking: no difference, no variance
    assert (same.difference, same.se, same.p) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="positive and negative"):
        delong_test(np.zeros(5), np.ones(5), np.ones(5))


def test_weighted_auc_matches_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(1)
    y = (rng.random(60) < 0.3).astype(int)
    s = np.round(rng.normal(size=60) + y, 1)
    w = rng.integers(0, 3, size=(5, 60))
    ours = weighted_auc(y, s, w)
    for row, value in zip(w, ours, strict=True):
        keep = row > 0
        assert value == pytest.approx(roc_auc_score(y[keep], s[keep], sample_weight=row[keep]))


def test_patient_bootstrap_keeps_a_patients_images_together():
    patients = np.array(["a", "a", "b", "c", "c", "c"])
    w = patient_weights(patients, 200, np.random.default_rng(0))
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # as many patients as there are


def test_clustered_mean_difference_covers_what_it_should():
    rng = np.random.default_rng(3)
    folds, same = [], []
    for _ in range(4):
        y = (rng.random(200) < 0.25).astype(int)
        patients = np.arange(200) // 2
        better = 1.5 * y + rng.normal(size=200)
        worse = 0.3 * y + rng.normal(size=200)
        folds.append((y, better, worse, patients))
        same.append((y, better, better, patients))
    d = clustered_mean_difference(folds, n_boot=400, seed=0)
    observed = np.mean([roc_auc_score(y, a) - roc_auc_score(y, b) for y, a, b, _ in folds])
    assert d.mean == pytest.approx(observed)
    assert 0 < d.low < d.mean < d.high
    zero = clustered_mean_difference(same, n_boot=100, seed=0)
    assert (zero.mean, zero.low, zero.high) == (0.0, 0.0, 0.0)
    again = clustered_mean_difference(folds, n_boot=400, seed=0)
    assert (again.low, again.high) == (d.low, d.high)  # seeded


# ---------------------------------------------------------------------------- comparison


def _write_fold(folder: Path, k: int, val_shift: float, test_shift: float, seed: int,
                tested: bool = True):
    """A fold's outputs as train_fold writes them: validation and test logits from a model
    whose separation is ``shift``; the test images are the same for every configuration."""
    rng = np.random.default_rng(100 + k)  # the fold's images: shared by configurations
    noise = np.random.default_rng(seed * 1000 + k)
    fold = folder / f"fold{k}"
    fold.mkdir(parents=True)
    for name, n, shift in (("validation_predictions.csv", 80, val_shift),
                           ("predictions.csv", 120, test_shift)):
        y = (rng.random(n) < 0.3).astype(int)
        ids = [f"{name[0]}{k}-{i}" for i in range(n)]
        logit = shift * y + noise.normal(size=n)
        if name == "predictions.csv" and not tested:
            continue
        pd.DataFrame({"image_id": ids, "patient": [f"p{k}-{i // 2}" for i in range(n)],
                      "sex": "F", "dislocated": y, "logit": logit,
                      "score": 1 / (1 + np.exp(-logit))}).to_csv(fold / name, index=False)
        if name == "predictions.csv":
            (fold / "test_metrics.json").write_text(json.dumps(
                {"fold": k, "auc": roc_auc_score(y, logit)}))


def test_configurations_compared_and_chosen_on_validation_alone(tmp_path):
    # "b" is best on validation, "c" best on test: the choice must not look at test
    for name, val, test, seed in (("a", 0.5, 0.5, 1), ("b", 2.0, 1.0, 2), ("c", 0.8, 2.5, 3)):
        for k in range(3):
            _write_fold(tmp_path / name, k, val, test, seed)
        (tmp_path / name / "configuration.json").write_text(
            json.dumps({"overrides": [f"model.x={name}"]}))
    configs = [load_configuration(tmp_path / n) for n in ("a", "b", "c")]
    assert chosen_by_validation(configs).name == "b"
    result = write_comparison(tmp_path, configs, n_boot=200)
    table = result.table.set_index("configuration")
    assert result.baseline == "a" and result.chosen == "b"
    assert table.loc["b", "chosen_by_validation"] and not table.loc["c", "chosen_by_validation"]
    assert table.loc["c", "delta_test_auc"] > table.loc["b", "delta_test_auc"] > 0
    assert table.loc["c", "delta_ci_low"] > 0 and table.loc["c", "paired_folds"] == 3
    assert len(result.folds) == 6 and (result.folds["delong_p"] <= 1).all()
    md = (tmp_path / "compare.md").read_text()
    assert "Chosen by validation AUC alone: b" in md and "Caveat" in md
    assert (tmp_path / "compare.csv").is_file() and (tmp_path / "compare_folds.csv").is_file()
    assert "Chosen by validation AUC alone" in (tmp_path / "compare.html").read_text()
    other = write_comparison(tmp_path, configs, baseline="c", n_boot=50)
    assert other.baseline == "c"
    with pytest.raises(ValueError, match="none of this sweep's configurations"):
        write_comparison(tmp_path, configs, baseline="zzz")


def test_trials_without_test_are_compared_on_validation_only(tmp_path):
    for name, val, seed in (("t1", 0.5, 1), ("t2", 1.5, 2)):
        for k in range(2):
            _write_fold(tmp_path / name, k, val, 1.0, seed, tested=False)
    configs = [load_configuration(tmp_path / n) for n in ("t1", "t2")]
    assert not any(c.tested for c in configs)
    result = write_comparison(tmp_path, configs, n_boot=50)
    assert result.chosen == "t2"
    assert np.isnan(result.table["test_auc_mean"]).all() and result.folds.empty
    assert "not read" in (tmp_path / "compare.md").read_text()
