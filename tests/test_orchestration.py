"""Orchestration: config groups, the fold sweep (Hydra multirun) with simulated DDP, W&B offline
runs, resume after a kill, skipping finished folds, launchers and the sweep tables.

The sweeps run the real command line in a subprocess, on a tiny phantom (ground-truth crops,
32 px, two folds, a few batches per epoch): what they check is orchestration, not learning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hipdisloc.config import to_settings
from hipdisloc.paths import CONFIG_DIR, PROJECT_ROOT
from hipdisloc.stages.train.job import gpu_for_job
from hipdisloc.stages.train.upstream import StageConflict, ensure_prepared, run_stage
from hipdisloc.train import normalise_argv

TINY = ["experiment=demo", "debug=fast", "n_folds=2", "cohort.phantom.n_patients=40",
        "cohort.phantom.image_size=128", "prepare.image_size=128", "prepare.workers=1",
        "cohort.phantom.workers=1", "crop.boxes_from=ground_truth", "crop.crop_size=32",
        # the tiny cohort as before the demo went to one radiograph per THA and batch 64
        "cohort.phantom.images_per_tha=2.0", "schedule.batch_size=32",
        # the demo's backbone learnt on an unlabelled cohort as tiny as the study's
        "self_supervised.n_patients=40", "self_supervised.epochs=1",
        "self_supervised.batch_size=16"]


def run_train(args: list[str], home: Path, background: bool = False):
    env = {**os.environ, "HOME": str(home), "HYDRA_FULL_ERROR": "1"}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", "hipdisloc.train", *args]
    if background:  # its own process group, output to a file (a full pipe would block it)
        log = open(home / "background.log", "w")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny study's upstream stages (phantom, prepare, crop), built once by a first run."""
    root = tmp_path_factory.mktemp("study")
    out = run_train([*TINY, f"paths.data_dir={root / 'data'}", f"paths.out_dir={root / 'first'}",
                     "fold=0"], root)
    for stage in ("phantom", "prepare", "crop", "self_supervised"):
        assert f"{stage}: building" in out
    assert "pretrain: building" not in out  # the privileged backbone is no default
    # experiment=demo's model.pretrained=self_supervised: the fold started from it
    result = json.loads((root / "first" / "fold0" / "test_metrics.json").read_text())
    assert result["pretrained"] == str(root / "data" / "self_supervised" / "backbone.pt")
    # its unlabelled cohort cut on boxes found as the study's were (here the ground truth)
    cohort = pd.read_csv(root / "data" / "self_supervised" / "crops" / "crops.csv", dtype=str)
    assert set(cohort["box_source"].dropna()) == {"ground_truth"}
    return root / "data"


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["cohort", "detector", "data", "model", "trainer", "logger",
                                   "callbacks", "experiment", "debug", "paths"])
def test_every_option_of_every_group_composes(group):
    assert options(group), group
    for option in options(group):
        extra = ["cohort.manifest=m.csv", "cohort.boxes=b.json"] if option == "manifest" else []
        # as a swept setting, the option names its configuration's folder; as a fixed one not
        fixed = ",".join(["fold", *(e.split("=")[0] for e in extra)])
        cfg = compose_train([f"{group}={option}", *extra,
                             f"hydra.job.config.override_dirname.exclude_keys=[{fixed}]"])
        assert cfg.fold == 0 and cfg.hydra.sweep.subdir == f"{group}={option}/fold0"
        cfg = compose_train([f"{group}={option}", *extra,
                             f"hydra.job.config.override_dirname.exclude_keys=[{fixed},{group}]"])
        assert cfg.hydra.sweep.subdir == "fold0"


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local", "submitit_slurm"])
def test_launchers_compose(launcher):
    cfg = compose_train([f"hydra/launcher={launcher}"])
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_the_paper_experiment_is_the_default_and_demo_overrides_it():
    paper = compose_train([])
    assert paper.name == "rouzrokh2021"
    assert (paper.schedule.head_epochs, paper.schedule.full_epochs,
            paper.schedule.batch_size) == (15, 5, 16)
    assert (paper.model.pos_weight, paper.model.lr, paper.prepare.image_size,
            paper.crop.crop_size, paper.detector.data.input_size,
            paper.detector.trainer.max_epochs) == (25.0, 1e-4, 512, 224, 512, 15)
    assert paper.callbacks.selection.sensitivity_floor == 0.8
    demo = compose_train(["experiment=demo", "trainer=ddp_cpu"])
    assert demo.name == "demo" and demo.paths.data_dir == "data/demo"
    assert (demo.trainer.strategy, demo.trainer.devices, demo.trainer.accelerator) == \
        ("ddp", 2, "cpu")
    assert (demo.trainer.precision, demo.model.channels_last) == ("fastest", "auto")
    assert demo.callbacks.selection.sensitivity_at == "paper_literal"
    # the larger demo is the demo with more patients, nothing else: the same detector, crops and
    # recipe (the slower, closer point of docs/demo.md's minutes against gap)
    large = compose_train(["experiment=demo_large"])
    assert large.name == "demo_large" and large.paths.data_dir == "data/demo_large"
    assert large.cohort.phantom.n_patients > demo.cohort.phantom.n_patients

    def study(cfg) -> dict:  # every setting but the run's name, its folders and Hydra's own
        return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                if k not in ("name", "paths", "hydra")}

    plain, wider = study(compose_train(["experiment=demo"])), study(large)
    wider["cohort"]["phantom"]["n_patients"] = plain["cohort"]["phantom"]["n_patients"]
    assert wider == plain


def test_command_line_normalisation():
    argv = ["train.py", "fold=0..9", "-m", "trainer=ddp_cpu", "trainer.devices=2"]
    exclude = "hydra.job.config.override_dirname.exclude_keys"
    assert normalise_argv(argv) == ["train.py", "-m", "fold=0,1,2,3,4,5,6,7,8,9",
                                    "trainer=ddp_cpu", "trainer.devices=2",
                                    f"{exclude}=[fold,trainer,trainer.devices]"]
    assert normalise_argv(["t", "fold=range(0,10)", "--multirun"]) == \
        ["t", "--multirun", "fold=range(0,10)", f"{exclude}=[fold]"]
    mine = f"{exclude}=[fold,a]"  # the user's own exclusions are kept as given
    assert normalise_argv(["t", "-m", "a=1,2", mine]) == ["t", "-m", "a=1,2", mine]
    assert normalise_argv(["t", "fold=3..1"]) == ["t", "fold=3,2,1"]
    assert [gpu_for_job(k, 4) for k in range(6)] == [[0], [1], [2], [3], [0], [1]]


def test_a_stage_is_reused_with_its_settings_and_refuses_others(tmp_path):
    calls = []
    assert run_stage("x", tmp_path / "x", {"a": 1}, lambda: calls.append(1)) is True
    assert run_stage("x", tmp_path / "x", {"a": 1}, lambda: calls.append(1)) is False
    assert calls == [1]
    with pytest.raises(StageConflict, match=r"x: .*x holds the output of other settings "
                                            r"\(differing: a\)"):
        run_stage("x", tmp_path / "x", {"a": 2}, lambda: calls.append(1))


def _patient_ids(data_dir: Path) -> set[str]:
    return set(pd.read_csv(data_dir / "phantom" / "manifest.csv")["patient_id"].astype(str))


def test_ddp_multirun_over_folds_with_wandb_offline(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    log = run_train([*TINY, f"paths.data_dir={data_dir}", f"paths.out_dir={sweep}",
                     "fold=0..1", "-m", "trainer=ddp_cpu", "trainer.devices=2", "logger=wandb",
                     "model.lr_finder=true"],
                    tmp_path)
    assert f"stage phantom: reused {data_dir / 'phantom'}" in log
    assert f"stage crop: reused {data_dir / 'crops'}" in log
    crops = pd.read_csv(data_dir / "crops" / "crops.csv")
    for fold in (0, 1):
        r = json.loads((sweep / f"fold{fold}" / "test_metrics.json").read_text())
        assert r["fold"] == fold and r["world_size"] == 2
        if 0 < r["n_positive"] < r["n_images"]:  # the phantom's best achievable AUC beside it
            assert 0.0 <= r["phantom_oracle_auc"] <= 1.0
        # stage 2's top rate: found once on rank 0, broadcast, within the finder's range
        assert 1e-6 <= r["lr_stage2_top"] <= 1e-2
        pred = pd.read_csv(sweep / f"fold{fold}" / "predictions.csv")
        # every test image scored exactly once although two ranks shared the test set
        assert len(pred) == r["n_images"] == pred["image_id"].nunique()
        assert int(pred["dislocated"].sum()) == r["n_positive"]
        assert set(pred["image_id"]) <= set(crops["image_id"])
        assert r["confusion"]["tp"] + r["confusion"]["fn"] == r["n_positive"]
        table = pd.read_csv(sweep / f"fold{fold}" / "fold_table.csv")
        assert set(table.loc[table["subset"] == "test", "image_id"]) == set(pred["image_id"])
        assert (table.groupby("patient")["subset"].nunique() == 1).all()  # no patient in two
        assert len(list((sweep / f"fold{fold}" / "wandb").glob("offline-run-*"))) == 1
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 1  # the summary run
    table2 = pd.read_csv(sweep / "table2.csv")
    assert table2["fold"].astype(str).tolist() == ["0", "1", "mean", "sd", "n"]
    assert (sweep / "table3.md").is_file()
    ids = _patient_ids(data_dir)
    for path in [*sweep.rglob("wandb/**/*"), sweep / "fold0" / "predictions.csv"]:
        if path.is_file():
            blob = path.read_bytes()
            leaked = [p for p in ids if p.encode() in blob]
            assert not leaked, f"{path} holds patient ids {leaked[:3]}"


def run_train_failing(args: list[str], home: Path) -> str:
    env = {**os.environ, "HOME": str(home)}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, "-m", "hipdisloc.train", *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True)
    assert done.returncode != 0, done.stdout[-3000:]
    return done.stdout + done.stderr


def test_rerun_skips_finished_folds_unless_forced_or_trained_otherwise(data_dir, tmp_path):
    args = [*TINY, f"paths.data_dir={data_dir}", f"paths.out_dir={tmp_path / 'out'}", "fold=1"]
    run_train(args, tmp_path)
    result = tmp_path / "out" / "fold1" / "test_metrics.json"
    first = result.stat().st_mtime_ns
    log = run_train([*args, "logger=csv"], tmp_path)  # another logger: the same result
    assert "exists, skipped" in log and result.stat().st_mtime_ns == first
    # a training setting changed: the old fold is not passed off as the new one
    log = run_train_failing([*args, "model.lr=3.0e-4"], tmp_path)
    assert "model.lr: 0.0001 there, 0.0003 in this command" in log
    assert "(finished)" in log and "callbacks.skip_finished=false" in log and "name=" in log
    assert "exists, skipped" not in log and result.stat().st_mtime_ns == first
    run_train([*args, "model.lr=3.0e-4", "callbacks.skip_finished=false"], tmp_path)
    assert result.stat().st_mtime_ns != first
    record = json.loads((tmp_path / "out" / "fold1" / "inputs.json").read_text())
    assert record["config"]["model"]["lr"] == 3.0e-4
    log = run_train([*args, "model.lr=3.0e-4"], tmp_path)  # now its own: reused
    assert "exists, skipped" in log


def test_a_sweep_of_settings_gets_a_folder_per_configuration_and_a_comparison(data_dir,
                                                                             tmp_path):
    sweep = tmp_path / "sweep"
    args = [*TINY, f"paths.data_dir={data_dir}", f"paths.out_dir={sweep}", "fold=0..1",
            "model.pos_weight=5,25", "-m", "compare.n_boot=200"]
    log = run_train(args, tmp_path)
    names = ["model.pos_weight=5", "model.pos_weight=25"]
    for name in names:
        for fold in (0, 1):
            r = json.loads((sweep / name / f"fold{fold}" / "test_metrics.json").read_text())
            assert r["fold"] == fold and r["calibration_inputs"]["pos_weight"] == \
                float(name.split("=")[1])
        assert pd.read_csv(sweep / name / "table2.csv")["fold"].astype(str).tolist()[:2] == \
            ["0", "1"]
        assert (sweep / name / "table3.md").is_file()
        assert (sweep / name / "report" / "report.html").is_file()
        assert json.loads((sweep / name / "configuration.json").read_text())["overrides"] == \
            [name]
        # W&B: the configuration's own group, its overrides in each fold run's config, and a
        # summary run in that group (offline runs: the records are in the .wandb file)
        for run in ("fold0/wandb", "wandb"):
            record = next((sweep / name / run).glob("offline-run-*/run-*.wandb")).read_bytes()
            assert f"demo-sweep/{name}".encode() in record
    assert not list(sweep.glob("fold*")) and not (sweep / "table2.csv").exists()
    compare = pd.read_csv(sweep / "compare.csv")
    assert compare["configuration"].tolist() == names
    assert compare["baseline"].tolist() == [True, False]
    assert compare["chosen_by_validation"].sum() == 1
    folds = pd.read_csv(sweep / "compare_folds.csv")
    assert folds["fold"].tolist() == [0, 1] and folds["delong_p"].between(0, 1).all()
    md = (sweep / "compare.md").read_text()
    assert "Chosen by validation AUC alone" in md and "DeLong" in md
    assert "configurations compared; chosen by validation AUC alone" in log
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 1  # the comparison run
    # afterwards: the comparison again with another baseline; the sweep folder is no sweep
    report = [sys.executable, "-m", "hipdisloc.report", str(sweep)]
    done = subprocess.run([*report, "--compare", "--baseline", names[1], "--n-boot", "50"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = pd.read_csv(sweep / "compare.csv").set_index("configuration")
    assert again.loc[names[1], "baseline"] and not again.loc[names[0], "baseline"]
    done = subprocess.run([*report, "--tables-only"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "it holds configurations" in done.stderr
    # the same sweep again with only a logging change: every fold reused
    log = run_train([*args, "logger=csv"], tmp_path)
    assert log.count("exists, skipped") == 4
    # a training setting changed: refused before any fold runs, every stale fold named
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("fold*/*.json")}
    log = run_train_failing([*args, "model.lr=3.0e-4"], tmp_path)
    assert "4 fold folder(s)" in log and "model.lr: 0.0001 there" in log
    assert "Launching" not in log and "stage phantom" not in log  # no job started
    assert before == {p: p.stat().st_mtime_ns for p in sweep.rglob("fold*/*.json")}


def test_a_killed_fold_resumes_from_its_last_epoch(data_dir, tmp_path):
    out = tmp_path / "out" / "fold0"
    args = [*TINY, f"paths.data_dir={data_dir}", f"paths.out_dir={tmp_path / 'out'}", "fold=0",
            "schedule.head_epochs=0", "schedule.full_epochs=6", "trainer.limit_train_batches=12",
            "trainer.limit_val_batches=4"]
    proc = run_train(args, tmp_path, background=True)
    selection = out / "checkpoints" / "selection.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if selection.is_file() and len(json.loads(selection.read_text())["history"]) >= 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(selection.read_text())["history"])
    assert 2 <= done_before < 6 and not (out / "test_metrics.json").exists()
    # the same fold with another training setting would resume this one's epochs: refused
    log = run_train_failing([*args, "model.pos_weight=5"], tmp_path)
    assert "(started)" in log and "model.pos_weight: 25.0 there, 5.0 in this command" in log
    assert len(json.loads(selection.read_text())["history"]) == done_before
    log = run_train(args, tmp_path)
    assert "stage2_all: resuming from" in log
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == list(range(6))  # each epoch once, none lost
    assert json.loads((out / "test_metrics.json").read_text())["fold"] == 0
    # finished: the selected weights stay, what only a resume needed is gone
    assert (out / "checkpoints" / "selected.pt").is_file()
    assert not list((out / "checkpoints").rglob("last.ckpt")) and not selection.exists()


def test_submitit_local_launcher_runs_the_folds(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    run_train([*TINY, f"paths.data_dir={data_dir}", f"paths.out_dir={sweep}", "fold=0,1", "-m",
               "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], tmp_path)
    for fold in (0, 1):
        assert json.loads((sweep / f"fold{fold}" / "test_metrics.json").read_text())["fold"] \
            == fold
    assert (sweep / "table2.csv").is_file()


def test_report_command_rebuilds_the_tables(data_dir, tmp_path):
    cmd = [sys.executable, "-m", "hipdisloc.report"]
    empty = subprocess.run([*cmd, str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True,
                           text=True)
    assert empty.returncode == 2 and "no fold*/test_metrics.json" in empty.stderr
    first = data_dir.parent / "first"  # the fixture's one-fold run
    done = subprocess.run([*cmd, str(first)], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table2 = pd.read_csv(first / "table2.csv")
    auc = json.loads((first / "fold0" / "test_metrics.json").read_text())["auc"]
    assert table2.loc[table2["fold"] == "mean", "auc"].item() == pytest.approx(auc)


def test_a_changed_manifest_is_not_paired_with_the_old_prepared_cache(small_phantom, tmp_path):
    cohort, _ = small_phantom
    manifest = tmp_path / "manifest.csv"
    rows = pd.read_csv(cohort / "manifest.csv")
    rows.to_csv(manifest, index=False)
    cfg = to_settings(compose_train(["cohort=manifest", f"cohort.manifest={manifest}",
                                     "cohort.boxes=b.json", "prepare.image_size=64",
                                     "prepare.workers=1"]))
    data = tmp_path / "data"
    ensure_prepared(cfg, data, manifest, cohort)
    built = (data / "prepared" / "stage.json").stat().st_mtime_ns
    ensure_prepared(cfg, data, manifest, cohort)  # same manifest: reused
    assert (data / "prepared" / "stage.json").stat().st_mtime_ns == built
    rows.iloc[1:].to_csv(manifest, index=False)  # same path, other content
    with pytest.raises(StageConflict, match="manifest_sha1"):
        ensure_prepared(cfg, data, manifest, cohort)


def test_tuning_with_optuna_never_reads_a_test_image_before_the_study_ends(data_dir, tmp_path,
                                                                           monkeypatch):
    """The Optuna sweeper in this process (its trials run here, one after another): every crop
    read is logged with the fold it was read for; until the study's end no fold reads one of
    its own test images, and then the chosen trial's are read once."""
    import hipdisloc.stages.train.study as study
    from hipdisloc.data.classification import CropDataset
    from hipdisloc.train import main

    reads, phase = [], {"now": "tuning"}
    stored = CropDataset.stored

    def logged(self, row):
        fold = self.stream[1] if len(self.stream) > 1 else None
        reads.append((phase["now"], fold, self.table.loc[row, "image_id"]))
        return stored(self, row)

    finish = study.finish_tuning

    def finishing(*args, **kwargs):
        phase["now"] = "end"
        return finish(*args, **kwargs)

    monkeypatch.setattr(CropDataset, "stored", logged)
    monkeypatch.setattr(study, "finish_tuning", finishing)
    sweep = tmp_path / "tune"
    monkeypatch.setattr(sys, "argv", normalise_argv([
        "train.py", *TINY, f"paths.data_dir={data_dir}", f"paths.out_dir={sweep}",
        "logger=csv", "data.num_workers=0", "report.build=false", "estimate=off", "-m",
        "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0",
        "model.pos_weight=interval(2.0,30.0)"]))
    main()
    trials = [p for p in sweep.iterdir() if (p / "trial.json").is_file()]
    assert len(trials) == 2 and all(p.name.startswith("model.pos_weight=") for p in trials)
    tested = [p for p in trials if (p / "fold0" / "test_metrics.json").is_file()]
    assert len(tested) == 1  # the chosen trial alone was tested
    chosen = tested[0]
    means = {p: json.loads((p / "trial.json").read_text())["mean_val_auc"] for p in trials}
    assert means[chosen] == max(means.values())  # chosen on validation alone
    other = next(p for p in trials if p != chosen)
    assert (other / "fold0" / "validation_predictions.csv").is_file()
    assert not (other / "fold0" / "predictions.csv").exists()
    test_ids = {}
    for fold in (0, 1):
        table = pd.read_csv(chosen / f"fold{fold}" / "fold_table.csv", dtype={"image_id": str})
        test_ids[fold] = set(table.loc[table["subset"] == "test", "image_id"])
        assert test_ids[fold]
    during = [(fold, i) for when, fold, i in reads if when == "tuning" and fold is not None]
    assert during and not [(f, i) for f, i in during if i in test_ids[f]]
    after = {i for when, fold, i in reads if when == "end"}
    assert test_ids[0] <= after and test_ids[1] <= after
    assert (chosen / "table2.csv").is_file()
    assert pd.read_csv(sweep / "compare.csv")["chosen_by_validation"].sum() == 1
