"""Benchmarks: their inputs, their arithmetic, and the GPU script's dry run on the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import data_pipeline, gpu_bench, predict_latency, scale, train_throughput
from benchmarks.synthetic import CROPS_COLUMNS, crops_table, write_crops_dir
from hipdisloc.data.classification import ClassificationDataModule
from hipdisloc.io import cache

ROOT = Path(__file__).resolve().parents[1]


def test_paper_scale_manifest_has_the_papers_shape():
    t = crops_table(92_584, 9_500, 0.016, seed=0)
    assert list(t.columns) == CROPS_COLUMNS and len(t) == 92_584
    assert t["image_id"].is_unique and t["patient_id"].nunique() == 9_500
    assert 0.015 <= t["dislocated"].mean() <= 0.018
    # labels, sides and sexes are per THA / per patient, as a real manifest's are
    assert t.groupby("tha_id")[["dislocated", "side"]].nunique().max().max() == 1
    assert t.groupby("patient_id")["sex"].nunique().max() == 1
    assert t["crop_path"].iloc[0] == "crops/" + cache.cache_relpath(t["image_id"].iloc[0])


def test_synthetic_crops_feed_the_data_module(tmp_path):
    write_crops_dir(tmp_path, n_rows=400, n_files=8, size=32)
    assert len(list((tmp_path / "crops").rglob("*.npy"))) == 8
    dm = ClassificationDataModule(str(tmp_path), fold=0, n_folds=10, batch_size=16,
                                  num_workers=0, augment="all")
    dm.setup()
    x, y, _ = next(iter(dm.train_dataloader()))
    # one channel: the model repeats it (DislocationClassifier.forward)
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    assert set(dm.table["subset"]) == {"train", "val", "test"}
    ds_labels = dm.subset("train")["dislocated"]
    assert 0 < ds_labels.mean() < 1


def test_step_clock_counts_the_images_between_its_marks():
    clock = train_throughput.StepClock(warmup=2, steps=3, device=torch.device("cpu"))
    batch = (None, torch.zeros(4), None)
    for i in range(6):  # one step more than warm-up + steps: not counted
        clock.on_train_batch_end(None, None, None, batch, i)
    assert len(clock.times) == 2 and clock.images == 3 * 4
    clock = train_throughput.StepClock(warmup=1, steps=2, device=torch.device("cpu"))
    for i in range(3):
        clock.on_train_batch_end(None, None, None, batch, i)
    assert clock.images == 2 * 4 and clock.rate() > 0


def test_projection_takes_the_slower_rate_and_adds_the_phases():
    paper = dict(gpu_bench.PAPER)
    p = gpu_bench.project(head_rate=1000.0, full_rate=500.0, eval_rate=3000.0,
                          data_rate=800.0, paper=paper)
    assert p["head"]["rate"] == 800.0 and p["head"]["bound_by"] == "data"
    assert p["full"]["rate"] == 500.0 and p["full"]["bound_by"] == "model"
    assert p["validation"]["samples"] == 10 * 20 * paper["val_samples_per_epoch"]
    expected = (10 * 15 * 160_000 / 800 + 10 * 5 * 160_000 / 500
                + 10 * 20 * paper["val_samples_per_epoch"] / 800) / 3600
    assert math.isclose(p["total_hours"], expected)
    assert gpu_bench.bound(1000.0, 950.0)[1] == "model and data (within 10 %)"
    # the all-layers phase bounded by its own end-to-end rate when it was measured
    apart = gpu_bench.project(1000.0, 500.0, 3000.0, 800.0, paper, full_data_rate=400.0)
    assert apart["full"]["rate"] == 400.0 and apart["full"]["bound_by"] == "data"
    assert apart["head"] == p["head"] and apart["validation"] == p["validation"]
    missing = gpu_bench.project(None, 500.0, 3000.0, None, paper)
    assert missing["head"] is None and missing["total_hours"] is None
    assert missing["full"]["bound_by"].startswith("model")


def test_a_failed_measurement_is_recorded_and_the_section_goes_on(tmp_path):
    rec = gpu_bench.Recorder(tmp_path, "train", gpu_bench.DRY)

    def broken():
        raise RuntimeError("CUDA out of memory")

    assert rec.attempt("first", broken) is None
    assert rec.attempt("second", lambda: {"plain_images_per_s": 5.0})["plain_images_per_s"] == 5
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["errors"] == [{"label": "first", "error": "RuntimeError: CUDA out of memory"}]
    assert [r["label"] for r in saved["results"]] == ["second"]


def test_gpu_script_out_of_time_skips_sections_and_still_reports(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BENCH_BUDGET_S": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["status"] == {name: "skipped" for name in gpu_bench.SECTIONS}
    assert summary["projection"]["components"]["total_hours"] is None
    text = (tmp_path / "results.txt").read_text()
    assert "n/a (rate missing)" in text and "SKIP train" in (tmp_path / "log.txt").read_text()


def test_gpu_bench_on_device_section_dry_run(tmp_path):
    """The data.on_device section of benchmarks/gpu.sh, on the CPU at its dry-run sizes."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_bench", "ondevice", "--out",
                           str(tmp_path), "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    section = json.loads((tmp_path / "ondevice.json").read_text())
    assert section["errors"] == []
    assert [r["label"] for r in section["results"]] == [
        "on-device batches b4", "on device head b4", "on device all b4"]
    assert section["results"][0]["images_per_s"] > 0 and section["results"][0]["resident_mb"] > 0
    assert all(r["lightning_datamodule_images_per_s"] > 0 for r in section["results"][1:])


def test_scale_tasks_on_a_small_manifest(tmp_path):
    csv = scale.write_manifest(tmp_path, images=3_000, patients=300, prevalence=0.05)
    folds = scale.run_task("folds", csv)
    assert sum(folds["subsets"].values()) == 3_000 and set(folds["subsets"]) == {
        "train", "val", "test"}
    over = scale.run_task("oversample", csv)
    assert over["positives"] == pytest.approx(0.5, abs=0.01)
    index = scale.run_task("cache_index", csv)
    assert index["paths"] == 3_000
    for r in (folds, over, index):
        assert r["seconds"] > 0 and r["peak_mb"] >= r["peak_mb_before_task"] > 0


def test_data_pipeline_measures_the_data_modules_own_loader(tmp_path):
    crops = data_pipeline.make_crops([1], batch_size=8, batches=2, size=32, workdir=tmp_path)
    r = data_pipeline.pipeline_rate(crops, 1, 8, 2)
    assert r["variant"].startswith("the data module's loader")
    assert r["samples"] == 16 and r["per_worker_per_s"] == r["samples_per_s"] > 0
    assert r["pin_memory"] == torch.cuda.is_available()
    # the baseline after the loader (never before forking workers), then the ratio
    row = data_pipeline.result_row(r, None, 32, 8)
    assert "ratio" not in row and "target" in data_pipeline.describe(row)
    base = data_pipeline.baseline_rate(crops, batch_size=8, batches=2)
    row = data_pipeline.result_row(r, base, 32, 8)
    assert base > 0 and math.isclose(row["ratio"], r["per_worker_per_s"] / base)
    assert "ratio" in data_pipeline.describe(row)
    measured = data_pipeline.item_costs(crops, n=16, batch_size=8)
    costs = measured["us_per_item"]
    assert set(measured["handoff_us_per_item"]) == {
        f"{how}_{t}" for how in ("shared", "reused") for t in ("float32", "float16")}
    assert all(v > 0 for v in measured["handoff_us_per_item"].values())
    assert all(costs[k] > 0 for k in (*data_pipeline.ITEM_STEPS, "getitems"))
    assert math.isclose(costs["sum"], sum(costs[k] for k in data_pipeline.ITEM_STEPS))


@pytest.mark.parametrize("channels_last", [False, True])
def test_train_throughput_feeds_one_channel_batches_as_training_does(channels_last):
    device = torch.device("cpu")
    loader = train_throughput.tensor_batches(4, 2, 32, device)
    x = next(iter(loader))[0]
    assert x.shape == (2, 1, 32, 32)
    module = train_throughput.classifier("all", channels_last, device)
    assert module.hparams.channels_last == channels_last
    net_input = train_throughput.as_network_input(x, channels_last)
    assert net_input.shape == (2, 3, 32, 32)
    assert net_input.is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():  # the plain loop's input gives the module's own logits
        torch.testing.assert_close(module.net(net_input).squeeze(1), module(x))
    assert train_throughput.plain_rate(loader, 2, 1, "all", device, False, channels_last) > 0


def test_train_throughput_plain_and_lightning_on_the_data_module():
    (r,) = train_throughput.main(["--size", "32", "--batch-size", "4", "--steps", "2",
                                  "--warmup", "1", "--repeats", "1", "--threads", "1",
                                  "--device", "cpu"])
    assert r["source"] == "datamodule"
    for key in ("plain_images_per_s", "lightning_images_per_s", "ratio"):
        assert np.isfinite(r[key]) and r[key] > 0


def test_predict_latency_on_a_sweep_it_builds():
    (r,) = predict_latency.main(["--folds", "2", "--image-size", "128", "--crop-size", "32",
                                 "--patients", "4", "--images", "3", "--repeats", "1",
                                 "--batch-size", "2", "--threads", "1"])
    assert r["built"] and (r["folds"], r["images"], r["crop_size"], r["threads"]) == (2, 3, 32, 1)
    for key in ("bare_forward", "end_to_end", "end_to_end_saliency"):
        assert 0 < r[key]["p50_ms"] <= r[key]["p95_ms"] and r[key]["n"] == 3
    # end to end holds a whole ensemble forward, and more
    assert r["ratio_p50"] > 1 and r["ratio_p50_saliency"] > 1
    assert set(r["stages_p50_ms"]) == {"prepare", "detect", "crop", "ensemble"}
    assert r["throughput_per_s"] > 0 and r["throughput_saliency_per_s"] > 0
    assert "DICOM in -> risk out" in predict_latency.describe(r)


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_result(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["status"] == {"train": "0", "ondevice": "0", "share": "0", "data": "0",
                                 "e2e": "0", "compile": "0"}
    for key in ("settings", "paper", "rates", "headline", "projection", "sections"):
        assert key in summary
    assert summary["headline"] == "on_device"
    assert set(summary["projection"]) == {"components", "end_to_end", "on_device"}
    loader, baseline = summary["sections"]["data"]["results"]
    assert (loader["label"], baseline["label"]) == ("data pipeline 2 workers",
                                                    "flip+rotate alone, one process")
    # the loader was measured first; its row got the baseline measured after it
    assert loader["baseline_flip_rotate_per_s"] == baseline["baseline_flip_rotate_per_s"]
    assert math.isclose(loader["ratio"], loader["per_worker_per_s"]
                        / baseline["baseline_flip_rotate_per_s"])
    assert [r["label"] for r in summary["sections"]["e2e"]["results"]] == [
        "end to end head b4 2 workers", "end to end all b4 2 workers",
        "end to end all b4 2 workers, no channels_last"]
    assert summary["sections"]["e2e"]["results"][0]["channels_last"] is True
    for name in gpu_bench.SECTIONS:
        section = summary["sections"][name]
        assert section["errors"] == [] and section["results"], name
        for r in section["results"]:
            rates = [v for k, v in r.items() if k.endswith("_per_s") or k == "ratio"]
            assert rates and all(np.isfinite(v) and v > 0 for v in rates), r
    labels = [r["label"] for r in summary["sections"]["train"]["results"]]
    assert labels[:3] == ["train all b2", "train all b4", "train head b4"]
    assert all(v is not None and v > 0 for v in summary["rates"].values())
    for p in summary["projection"].values():
        assert np.isfinite(p["total_hours"]) and p["total_hours"] > 0
        assert all(p[phase]["bound_by"] for phase in ("head", "full", "validation"))
    text = (tmp_path / "results.txt").read_text()
    assert "projected wall time" in text and "FAILED" not in text
    assert "START train" in (tmp_path / "log.txt").read_text()


def test_prepare_throughput_reports_its_ratio_and_the_floor():
    from benchmarks import prepare_throughput

    rows = prepare_throughput.main(["--n-patients", "2", "--image-size", "256"])
    assert [r["benchmark"].split("(")[1].split(",")[0] for r in rows] == [
        "uncompressed", "jpeg2000"]
    for r in rows:
        assert r["baseline_per_s"] > 0 and r["ours_per_s"] > 0
        assert math.isclose(r["ratio"], r["ours_per_s"] / r["baseline_per_s"])
        assert math.isclose(r["floor_ratio"], r["decode_resize_per_s"] / r["baseline_per_s"])


def test_cpu_precision_compares_what_fastest_resolves_to_with_fp32():
    from benchmarks import cpu_precision
    from hipdisloc.precision import cpu_flags

    r = cpu_precision.main(["--size", "32", "--batch-size", "4", "--steps", "1"])
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert r["precision"] == ("bf16-mixed" if native else "32-true")
    assert r["fp32"] > 0 and r["chosen"] > 0
    if not native:  # fp32 both ways: the same measurement, ratio 1
        assert r["ratio"] == 1.0
    forced = cpu_precision.main(["--size", "32", "--batch-size", "4", "--steps", "1",
                                 "--force-bf16"])
    assert forced["precision"] == "bf16-mixed" and forced["chosen"] != forced["fp32"]
