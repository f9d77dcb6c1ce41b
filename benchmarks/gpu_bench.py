"""The sections of the GPU benchmark, one per process; benchmarks/gpu.sh runs them in order
under a time cap each and says how to run it (read its header first).

    python3 -m benchmarks.gpu_bench {train,data,e2e,compile,report} --out DIR [--dry-run]

- ``train``: classifier training images/s at 224 px, bf16 autocast, channels_last, pre-made
  batches on the GPU: plain loop and Lightning (benchmarks/train_throughput.py) at batch 64, 128
  and 256, all layers; the head stage (frozen backbone) at 256; inference (validation) at 256;
  the plain loop at 256 in fp32 and in bf16 without channels_last, to show what each flag buys.
- ``data``: the classification data pipeline (benchmarks/data_pipeline.py) with 16 workers, as
  ClassificationDataModule builds it (one-channel items, OpenCV's default thread pool in each
  worker, pinned memory as conf/trainer/gpu_fast.yaml sets it); then its baseline, flip + rotate
  alone in this process. The baseline runs after the loader on purpose: workers forked after
  this process has run OpenCV's thread pool may stall (the earlier data section did).
- ``e2e``: Lightning fitting our ClassificationDataModule itself (16 workers, augmentation on,
  pinned memory, batch 256) and DislocationClassifier(channels_last=True), head stage then all
  layers: the data path and the model together (one channel copied to the GPU, repeated there);
  then all layers without channels_last, to show what that flag buys end to end.
- ``compile``: the plain loop at 256 with ``torch.compile`` (inductor) against without.
- ``report``: results.json and results.txt from the sections' JSON files, with the projected
  wall time of the paper's 10-fold study (``project``).

Every measurement is written to DIR/<section>.json as soon as it is made, and a failure is
recorded there in place of its number, so a section stopped by its cap or an error keeps what it
had. ``--dry-run`` runs the same code on the CPU with tiny sizes (seconds, not minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

SECTIONS = ("train", "ondevice", "share", "data", "e2e", "compile")

# The paper's study (Rouzrokh et al. 2021): 92,584 images, 10 folds, 15 head + 5 full epochs.
# An oversampled training epoch holds ~160,000 samples (9/10 of the images, normals once and
# dislocated repeats up to the same count); validation (half the held-out tenth, oversampled as
# the paper did) ~160,000 / 18 = ~8,900 per epoch.
PAPER = {"images": 92_584, "folds": 10, "head_epochs": 15, "full_epochs": 5,
         "train_samples_per_epoch": 160_000, "val_samples_per_epoch": 8_900}


@dataclass(frozen=True)
class Settings:
    device: str
    size: int
    batch_sizes: tuple[int, ...]
    steps: int
    warmup: int
    repeats: int
    big_batch: int  # head stage, inference, flag variants, compile, e2e
    data_workers: int
    data_batch: int
    data_batches: int
    e2e_steps: int
    compile_backend: str
    threads: int | None = None  # torch CPU threads of the main process (None: torch's default)


FULL = Settings(device="cuda", size=224, batch_sizes=(64, 128, 256), steps=30, warmup=5,
                repeats=2, big_batch=256, data_workers=16, data_batch=128, data_batches=160,
                e2e_steps=60, compile_backend="inductor")
DRY = Settings(device="cpu", size=32, batch_sizes=(2, 4), steps=2, warmup=1, repeats=1,
               big_batch=4, data_workers=2, data_batch=8, data_batches=4, e2e_steps=3,
               compile_backend="eager", threads=1)


def stamp(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment() -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


class Recorder:
    """Results of one section, rewritten to ``DIR/<section>.json`` after every measurement."""

    def __init__(self, out: Path, section: str, settings: Settings):
        self.path = out / f"{section}.json"
        self.data = {"section": section, "settings": asdict(settings), "env": environment(),
                     "results": [], "errors": []}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def attempt(self, label: str, fn, *args, **kwargs):
        """Run one measurement; record its result (a dict) or its error, never raise."""
        stamp(f"{label} ...")
        start = time.perf_counter()
        try:
            result = {"label": label, **fn(*args, **kwargs)}
        except Exception as err:  # noqa: BLE001 - one failure must not cost the others
            traceback.print_exc()
            self.data["errors"].append({"label": label, "error": f"{type(err).__name__}: {err}"})
            self.save()
            return None
        result["wall_s"] = time.perf_counter() - start
        self.data["results"].append(result)
        self.save()
        stamp(f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                       if isinstance(v, float)))
        return result


def section_train(s: Settings, rec: Recorder, workdir: Path) -> None:
    import torch

    from benchmarks import train_throughput as tt

    device = torch.device(s.device)
    torch.backends.cudnn.benchmark = True

    def compare(batch: int, stage: str) -> dict:
        r = tt.compare("tensors", batch, s.steps, s.warmup, s.size, stage, device, True, True,
                       s.repeats, workdir)
        print(tt.describe(r), flush=True)
        return r

    for batch in s.batch_sizes:
        rec.attempt(f"train all b{batch}", compare, batch, "all")
    rec.attempt(f"train head b{s.big_batch}", compare, s.big_batch, "head")
    loader = tt.tensor_batches(s.warmup + s.steps + 2, s.big_batch, s.size, device)
    rec.attempt(f"eval b{s.big_batch}", lambda: {
        "stage": "eval", "batch_size": s.big_batch,
        "images_per_s": tt.eval_rate(loader, s.steps, s.warmup, device, True, True)})
    for bf16, channels_last in ((False, False), (True, False), (True, True)):
        name = ("bf16" if bf16 else "fp32") + (" channels_last" if channels_last else "")
        rec.attempt(f"plain all b{s.big_batch} {name}", lambda b=bf16, c=channels_last: {
            "stage": "all", "batch_size": s.big_batch, "bf16": b, "channels_last": c,
            "plain_images_per_s": tt.plain_rate(loader, s.steps, s.warmup, "all", device, b, c)})


GPU_FAST_BATCH_DTYPE = "float16"  # conf/trainer/gpu_fast.yaml: data.batch_dtype


def section_data(s: Settings, rec: Recorder, workdir: Path) -> None:
    from benchmarks import data_pipeline as dp

    w = s.data_workers
    crops = dp.make_crops([w], s.data_batch, s.data_batches, s.size, workdir)

    def measure() -> dict:
        r = dp.pipeline_rate(crops, w, s.data_batch, s.data_batches,
                             batch_dtype=GPU_FAST_BATCH_DTYPE)
        r = dp.result_row(r, None, s.size, s.data_batch)
        print(dp.describe(r), flush=True)
        return r

    # the loader first: its workers must not be forked after the baseline has run OpenCV's
    # thread pool in this process
    row = rec.attempt(f"data pipeline {w} workers", measure)
    base = rec.attempt("flip+rotate alone, one process", lambda: {
        "samples": s.data_batches * s.data_batch,
        "baseline_flip_rotate_per_s": dp.baseline_rate(crops, s.data_batch, s.data_batches)})
    if row and base:  # the loader's row gets its baseline and ratio
        row.update(dp.result_row(row, base["baseline_flip_rotate_per_s"], s.size,
                                 s.data_batch))
        rec.save()
        print(dp.describe(row), flush=True)


def section_e2e(s: Settings, rec: Recorder, workdir: Path) -> None:
    import torch

    from benchmarks import train_throughput as tt
    from benchmarks.synthetic import write_crops_dir
    from hipdisloc.data.classification import ClassificationDataModule

    device = torch.device(s.device)
    warmup = 2 * s.data_workers + s.warmup  # past the batches prefetched at start
    crops = write_crops_dir(workdir / "crops", (warmup + s.e2e_steps + 4) * s.big_batch,
                            n_files=256, size=s.size)

    def measure(stage: str, channels_last: bool) -> dict:
        dm = ClassificationDataModule(str(crops), fold=0, n_folds=10, seed=0,
                                      batch_size=s.big_batch, num_workers=s.data_workers,
                                      augment="all", pin_memory=device.type == "cuda",
                                      batch_dtype=GPU_FAST_BATCH_DTYPE)
        dm.ensure_pack()  # as FoldRun does
        dm.setup()
        rate = tt.lightning_rate(dm, s.e2e_steps, warmup, stage, device, True, channels_last,
                                 workdir / f"e2e_{stage}_{channels_last}")
        return {"stage": stage, "batch_size": s.big_batch, "workers": s.data_workers,
                "channels_last": channels_last, "pin_memory": dm.pin_memory,
                "batch_dtype": dm.batch_dtype,
                "lightning_datamodule_images_per_s": rate}

    label = f"b{s.big_batch} {s.data_workers} workers"
    # head first: its model is fast, so the data path (loading to the copy to the GPU) shows
    rec.attempt(f"end to end head {label}", measure, "head", True)
    rec.attempt(f"end to end all {label}", measure, "all", True)
    rec.attempt(f"end to end all {label}, no channels_last", measure, "all", False)


def section_ondevice(s: Settings, rec: Recorder, workdir: Path) -> None:
    """``data.on_device``: the pack resident on the device, batches gathered, warped and
    normalised there (hipdisloc.data.on_device). The batches alone, then Lightning fitting the
    data module with them (head and all layers, bf16 + channels_last), with no workers."""
    import torch

    from benchmarks import train_throughput as tt
    from benchmarks.synthetic import write_crops_dir
    from hipdisloc.data.classification import ClassificationDataModule

    device = torch.device(s.device)
    crops = write_crops_dir(workdir / "crops", (s.warmup + s.e2e_steps + 4) * s.big_batch,
                            n_files=256, size=s.size)

    def data_module() -> ClassificationDataModule:
        dm = ClassificationDataModule(str(crops), fold=0, n_folds=10, seed=0,
                                      batch_size=s.big_batch, num_workers=0, augment="all",
                                      on_device=True)
        dm.ensure_pack()
        dm.setup()
        return dm

    def batches_alone() -> dict:
        dm = data_module()
        loader = dm.train_dataloader(device)  # the loader a fold's Trainer gets
        start, n = None, 0
        for i, (images, _, _) in enumerate(loader):
            if i == s.warmup:
                _sync(device)
                start = time.perf_counter()
            elif i > s.warmup:
                n += len(images)
            if i >= s.warmup + s.steps:
                break
        _sync(device)
        return {"batch_size": s.big_batch, "resident_mb": loader.crops.nbytes / 2**20,
                "images_per_s": n / (time.perf_counter() - start)}

    def measure(stage: str) -> dict:
        rate = tt.lightning_rate(data_module(), s.e2e_steps, s.warmup, stage, device, True, True,
                                 workdir / f"ondevice_{stage}")
        return {"stage": stage, "batch_size": s.big_batch, "workers": 0,
                "lightning_datamodule_images_per_s": rate}

    rec.attempt(f"on-device batches b{s.big_batch}", batches_alone)
    rec.attempt(f"on device head b{s.big_batch}", measure, "head")
    rec.attempt(f"on device all b{s.big_batch}", measure, "all")


def section_share(s: Settings, rec: Recorder, workdir: Path) -> None:
    """Folds sharing one device: 1, 2 and 4 (dry run: 1 and 2) processes at once, each fitting
    the on-device data module on all layers as a fold job does; the summed images/s of the jobs
    against one job's. CUDA MPS is used when its daemon runs (never started here: the machine's
    settings are left as they are)."""
    import shutil
    import subprocess
    import sys

    from benchmarks.synthetic import write_crops_dir

    crops = write_crops_dir(workdir / "crops", (s.warmup + s.e2e_steps + 4) * s.big_batch,
                            n_files=256, size=s.size)
    mps = shutil.which("nvidia-cuda-mps-control") is not None and any(
        "nvidia-cuda-mps" in p.read_text(errors="ignore")
        for p in Path("/proc").glob("[0-9]*/comm") if p.is_file())

    def measure(jobs: int) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.gpu_bench", "share_job", "--out",
               str(workdir / f"share{jobs}"), "--crops", str(crops),
               *(["--dry-run"] if s.device == "cpu" else [])]
        start = time.perf_counter()
        procs = [subprocess.Popen([*cmd, "--job", str(j)]) for j in range(jobs)]
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - start
        if any(codes):
            raise RuntimeError(f"share jobs exited {codes}")
        done = [json.loads((workdir / f"share{jobs}" / f"job{j}.json").read_text())
                for j in range(jobs)]
        # all jobs' images over the span from the first fit's start to the last one's end:
        # jobs that did not overlap cannot show scaling they did not have
        span = max(d["end"] for d in done) - min(d["start"] for d in done)
        return {"jobs": jobs, "mps": mps, "wall_s": wall,
                "per_job_images_per_s": min(d["rate"] for d in done),
                "images_per_s": sum(d["images"] for d in done) / span}

    for jobs in ((1, 2) if s.device == "cpu" else (1, 2, 4)):
        rec.attempt(f"{jobs} fold job(s) sharing the device", measure, jobs)
    rows = [r for r in rec.data["results"] if "jobs" in r]
    if rows:
        one = rows[0]["images_per_s"]
        for r in rows:
            r["ratio"] = r["images_per_s"] / one
        rec.save()


def share_job(s: Settings, out: Path, crops: Path, job: int) -> None:
    """One of section_share's processes: the on-device data module fitted on all layers."""
    import torch

    from benchmarks import train_throughput as tt
    from hipdisloc.data.classification import ClassificationDataModule

    dm = ClassificationDataModule(str(crops), fold=job % 10, n_folds=10, seed=0,
                                  batch_size=s.big_batch, num_workers=0, augment="all",
                                  on_device=True)
    dm.ensure_pack()
    dm.setup()
    start = time.time()
    rate = tt.lightning_rate(dm, s.e2e_steps, s.warmup, "all", torch.device(s.device), True,
                             True, out / f"job{job}")
    end = time.time()
    out.mkdir(parents=True, exist_ok=True)
    images = (s.warmup + s.e2e_steps) * s.big_batch
    (out / f"job{job}.json").write_text(json.dumps({"job": job, "rate": rate, "start": start,
                                                    "end": end, "images": images}))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def section_compile(s: Settings, rec: Recorder, workdir: Path) -> None:
    import torch

    from benchmarks import train_throughput as tt

    device = torch.device(s.device)
    torch.backends.cudnn.benchmark = True
    loader = tt.tensor_batches(s.warmup + s.steps + 4, s.big_batch, s.size, device)

    def measure() -> dict:
        eager = tt.plain_rate(loader, s.steps, s.warmup, "all", device, True, True)
        compiled = tt.plain_rate(loader, s.steps, max(s.warmup, 3), "all", device, True, True,
                                 compile_backend=s.compile_backend)
        return {"stage": "all", "batch_size": s.big_batch, "backend": s.compile_backend,
                "plain_images_per_s": eager, "compiled_images_per_s": compiled,
                "ratio": compiled / eager}

    rec.attempt(f"torch.compile b{s.big_batch}", measure)


def bound(model_rate: float, data_rate: float | None,
          tolerance: float = 0.1) -> tuple[float, str]:
    """The rate a phase runs at and what bounds it: ``model``, ``data``, or ``model and data``
    when the two are within ``tolerance`` of each other."""
    if data_rate is None or data_rate <= 0:
        return model_rate, "model (data side not measured)"
    rate = min(model_rate, data_rate)
    if data_rate < model_rate * (1 - tolerance):
        return rate, "data"
    if model_rate < data_rate * (1 - tolerance):
        return rate, "model"
    return rate, "model and data (within 10 %)"


def project(head_rate: float | None, full_rate: float | None, eval_rate: float | None,
            data_rate: float | None, paper: dict = PAPER,
            full_data_rate: float | None = None) -> dict:
    """Projected wall time of the paper's study: per phase, its samples / the slower of the
    model's rate and the data side's (which one bounds it is named); a phase whose model rate is
    missing is None, and so is the total. ``full_data_rate``: the data side's rate in the
    all-layers phase when it was measured apart (end to end, all layers), else ``data_rate``."""
    phases = [("head", paper["head_epochs"], paper["train_samples_per_epoch"], head_rate,
               data_rate),
              ("full", paper["full_epochs"], paper["train_samples_per_epoch"], full_rate,
               full_data_rate or data_rate),
              ("validation", paper["head_epochs"] + paper["full_epochs"],
               paper["val_samples_per_epoch"], eval_rate, data_rate)]
    out, hours = {}, []
    for name, epochs, samples, model_rate, side_rate in phases:
        if model_rate is None or model_rate <= 0:
            out[name], hours = None, None
            continue
        rate, bound_by = bound(model_rate, side_rate)
        n = paper["folds"] * epochs * samples
        out[name] = {"samples": n, "rate": rate, "bound_by": bound_by, "hours": n / rate / 3600}
        if hours is not None:
            hours.append(out[name]["hours"])
    out["total_hours"] = None if hours is None else sum(hours)
    return out


def _load(out: Path, section: str) -> dict:
    path = out / f"{section}.json"
    return json.loads(path.read_text()) if path.is_file() else {"results": [], "errors": []}


def _find(section: dict, label: str) -> dict | None:
    return next((r for r in section["results"] if r["label"] == label), None)


def summarise(out: Path, status: dict[str, str], s: Settings) -> dict:
    """Everything measured, in one dict: sections, exit codes, rates and the projections.

    Projections: ``components`` bounds each phase by the model's rate (Lightning at the big
    batch; inference for validation) and the data pipeline's rate with all its workers;
    ``end_to_end`` by the rate of Lightning fitting our data module on the head stage, whose
    model is fast enough that the data path (loading, augmentation, collation, the copy to the
    GPU) shows, and for the all-layers phase by its own end-to-end rate when measured: that is
    the realistic one, and the headline when it was measured.
    """
    sections = {name: _load(out, name) for name in SECTIONS}
    big, w = s.big_batch, s.data_workers

    def rate(section: str, label: str, key: str) -> float | None:
        r = _find(sections[section], label)
        return r[key] if r else None

    rates = {"head": rate("train", f"train head b{big}", "lightning_images_per_s"),
             "full": rate("train", f"train all b{big}", "lightning_images_per_s"),
             "eval": rate("train", f"eval b{big}", "images_per_s"),
             "data": rate("data", f"data pipeline {w} workers", "samples_per_s"),
             "e2e_head": rate("e2e", f"end to end head b{big} {w} workers",
                              "lightning_datamodule_images_per_s"),
             "e2e_all": rate("e2e", f"end to end all b{big} {w} workers",
                             "lightning_datamodule_images_per_s"),
             "e2e_all_no_channels_last": rate(
                 "e2e", f"end to end all b{big} {w} workers, no channels_last",
                 "lightning_datamodule_images_per_s"),
             "on_device_head": rate("ondevice", f"on device head b{big}",
                                    "lightning_datamodule_images_per_s"),
             "on_device_all": rate("ondevice", f"on device all b{big}",
                                   "lightning_datamodule_images_per_s")}
    shared = [r for r in sections["share"]["results"] if "jobs" in r]
    best = max(shared, key=lambda r: r["images_per_s"]) if shared else None
    projection = {"components": project(rates["head"], rates["full"], rates["eval"],
                                        rates["data"])}
    if rates["e2e_head"]:
        projection["end_to_end"] = project(rates["head"], rates["full"], rates["eval"],
                                           rates["e2e_head"], full_data_rate=rates["e2e_all"])
    if rates["on_device_head"]:  # data.on_device: the model's rate with its own data path
        projection["on_device"] = project(rates["on_device_head"], rates["on_device_all"],
                                          rates["eval"], None)
        if best is not None and projection["on_device"]["total_hours"] is not None:
            projection["on_device"]["best_jobs_per_device"] = best["jobs"]
            projection["on_device"]["total_hours_sharing"] = (
                projection["on_device"]["total_hours"] / best["ratio"])
    headline = next(k for k in ("on_device", "end_to_end", "components") if k in projection)
    return {"settings": asdict(s), "status": status, "paper": PAPER, "rates": rates,
            "headline": headline, "projection": projection, "sections": sections}


RATE_NAMES = (("plain_images_per_s", "plain loop"), ("lightning_images_per_s", "Lightning"),
              ("images_per_s", "inference"), ("samples_per_s", "pipeline"),
              ("per_worker_per_s", "per worker"),
              ("baseline_flip_rotate_per_s", "flip+rotate alone"),
              ("lightning_datamodule_images_per_s", "Lightning + DataModule"),
              ("compiled_images_per_s", "compiled"),
              ("per_job_images_per_s", "slowest job"))


def _fmt(v, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def result_line(r: dict) -> str:
    """One measurement: its label, its rates (per second) and its ratio if it has one."""
    parts = [f"{name} {r[key]:,.0f}/s" for key, name in RATE_NAMES if key in r]
    if "ratio" in r:
        parts.append(f"ratio {r['ratio']:.3f}")
    return f"  {r['label']:50s} " + ", ".join(parts)


def table(summary: dict) -> str:
    """The readable text of results.txt."""
    lines = ["hipdisloc GPU benchmark", ""]
    env = next((sec["env"] for sec in summary["sections"].values() if "env" in sec), {})
    lines.append("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append("sections (exit code; 124 = stopped by its cap): "
                 + ", ".join(f"{k} {v}" for k, v in summary["status"].items()))
    settings = summary["settings"]
    lines += ["", f"rates at {settings['size']} px, bf16 autocast, channels_last (targets: "
              "Lightning/plain >= 0.97; pipeline >= 2,000 samples/s per worker):"]
    for sec in summary["sections"].values():
        lines += [result_line(r) for r in sec["results"]]
        lines += [f"  {e['label']:50s} FAILED: {e['error'][:160]}" for e in sec["errors"]]
    lines += ["", "projected wall time of the paper's study (10 folds x (15 head + 5 full "
              "epochs) x 160,000 samples, plus validation):"]
    for kind, p in summary["projection"].items():
        star = " (headline)" if kind == summary["headline"] else ""
        lines.append(f"  {kind}{star}: total {_fmt(p['total_hours'], '.2f')} h"
                     + (f"; {p['best_jobs_per_device']} fold jobs sharing the device: "
                        f"{_fmt(p['total_hours_sharing'], '.2f')} h"
                        if p.get("total_hours_sharing") is not None else ""))
        for phase in ("head", "full", "validation"):
            q = p[phase]
            lines.append(f"    {phase:10s} " + ("n/a (rate missing)" if q is None else
                         f"{q['samples']:>10,d} samples at {q['rate']:,.0f}/s "
                         f"(bound by {q['bound_by']}): {q['hours']:.2f} h"))
    return "\n".join(lines) + "\n"


def section_report(s: Settings, out: Path, status: dict[str, str]) -> None:
    summary = summarise(out, status, s)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    text = table(summary)
    (out / "results.txt").write_text(text)
    print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=(*SECTIONS, "report", "share_job"))
    parser.add_argument("--crops", type=Path, help="share_job: the crops directory")
    parser.add_argument("--job", type=int, default=0, help="share_job: its number")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--status", default="", help="report: 'train=0 data=124 ...'")
    args = parser.parse_args(argv)
    s = DRY if args.dry_run else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    if args.section == "report":
        status = dict(kv.split("=", 1) for kv in args.status.split())
        section_report(s, args.out, status)
        return
    import torch

    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
    if s.threads:
        torch.set_num_threads(s.threads)
    if args.section == "share_job":
        share_job(s, args.out, args.crops, args.job)
        return
    rec = Recorder(args.out, args.section, s)
    run = {"train": section_train, "ondevice": section_ondevice, "share": section_share,
           "data": section_data, "e2e": section_e2e, "compile": section_compile}[args.section]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run(s, rec, Path(tmp))
        except Exception as err:  # noqa: BLE001 - a failed set-up is a result too
            traceback.print_exc()
            rec.data["errors"].append({"label": f"{args.section} (set-up)",
                                       "error": f"{type(err).__name__}: {err}"})
            rec.save()
            raise SystemExit(1) from err


if __name__ == "__main__":
    main()
