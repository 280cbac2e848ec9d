"""Image-folder data at scale: peak memory, loading throughput, and the digits distill epoch before/after streaming.

1. Peak resident memory of `compress run` on a generated ImageFolder of 2,000 and of 20,000
   JPEGs (224x224, 10 classes; trained at 64x64: 1 teacher epoch, 1 distill epoch, one ONNX
   Runtime build, a benchmark stage of one timed run). Each run is a fresh process; memory is
   read two ways: the largest single process of the tree (`os.wait4`'s ru_maxrss, DataLoader
   workers included) and the sum over the whole tree (psutil, sampled every 0.2 s). Streaming
   means the 20k run stays within 1.25x of the 2k run.
2. Loading throughput (images/s): compress's StreamSplit (`load_dataset(...).train.batches(64)`)
   against torchvision's ImageFolder + DataLoader over the same files with the same steps
   (decode, resize the shorter side to 256, centre crop 224, normalise), 2 workers, batch 64;
   interleaved, median of --repeats. Target: at least 0.9x torchvision.
3. The distill stage of examples/digits/pipeline.yaml with this tree against the last commit
   (`git archive HEAD`, unpacked under /tmp; the repository is not touched), same interpreter,
   interleaved, median of --repeats; only stages after distill are lightened (no baseline, a
   one-run benchmark), which do not change what distill does. Target: new at most 1.10x old.

The generated images are kept under --cache and reused by the next run.

    python benchmarks/data_scale.py [--repeats 3] [--cache /tmp/compress-data-scale]   # 10-20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (2_000, 20_000)
CLASSES = 10
SIDE = 224
# Fixed statistics: the runs compare memory and speed, not how mean/std are measured.
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
RSS_TARGET, THROUGHPUT_TARGET, EPOCH_TARGET = 1.25, 0.9, 1.10


# ---------------------------------------------------------------- generated images


def generate_images(cache: Path) -> dict[int, Path]:
    """{size: ImageFolder root}; 20k JPEGs made once (smooth: a 6x6 random image upscaled), the 2k folder hard links."""
    stamp = cache / "complete.json"
    spec = {"sizes": list(SIZES), "classes": CLASSES, "side": SIDE, "seed": 0}
    roots = {n: cache / f"images_{n}" for n in SIZES}
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return roots
    from PIL import Image

    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    largest = roots[max(SIZES)]
    per_class = max(SIZES) // CLASSES
    for label in range(CLASSES):
        folder = largest / f"class_{label:02d}"
        folder.mkdir(parents=True)
        tint = rng.uniform(0.3, 1.0, size=3)  # a colour cast per class: the models have something to learn
        for index in range(per_class):
            small = rng.uniform(0, 255, size=(6, 6, 3)) * tint
            image = Image.fromarray(small.astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
            image.save(folder / f"{index:05d}.jpg", quality=85)
    for n in SIZES:
        if n == max(SIZES):
            continue
        for label in range(CLASSES):
            source, target = largest / f"class_{label:02d}", roots[n] / f"class_{label:02d}"
            target.mkdir(parents=True)
            for index in range(n // CLASSES):
                os.link(source / f"{index:05d}.jpg", target / f"{index:05d}.jpg")
    stamp.write_text(json.dumps(spec))
    print(f"generated {max(SIZES):,} JPEGs of {SIDE}x{SIDE} in {time.perf_counter() - started:.0f} s under {cache}\n")
    return roots


# ---------------------------------------------------------------- 1. peak memory of compress run


def scale_pipeline(images: Path, n: int) -> dict:
    return {
        "name": f"data-scale-{n}",
        "seed": 0,
        "data": {"source": "imagefolder", "path": str(images), "val_fraction": 0.1, "image_size": 64,
                 "mean": MEAN, "std": STD, "workers": 2},
        "teacher": {"model": "cnn", "kwargs": {"channels": [8, 16, 32]},
                    "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "progress": False}},
        "student": {"model": "cnn", "kwargs": {"channels": [4, 8, 16]}},
        "stages": {
            "distill": {"epochs": 1, "batch_size": 64, "lr": 0.005, "progress": False},
            "export": {},
            "build": {"targets": ["onnxruntime:fp32"]},
            "benchmark": {"batch_sizes": [1], "warmup": 0, "warmup_seconds": 0, "runs": 1, "min_seconds": 0,
                          "rounds": 1, "memory": False},
            "report": {},
        },
    }


def run_measured(command: list[str], env: dict, cwd: Path) -> dict:
    """Run `command` to its end: exit code, wall seconds, ru_maxrss of the tree's largest process, peak tree-sum RSS."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    peak_sum = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        try:
            tree = [root, *root.children(recursive=True)]
            total = 0
            for member in tree:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
            peak_sum = max(peak_sum, total)
        except psutil.Error:
            pass
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace")
    return {"rc": process.returncode, "seconds": time.perf_counter() - started,
            "largest_mb": usage.ru_maxrss / 1024, "tree_mb": peak_sum / 2**20, "stderr": errors}


def measure_memory(roots: dict[int, Path], work: Path) -> list[str]:
    lines = ["| images | train / val | wall s | largest process peak MB | tree peak MB (sum) |",
             "|---:|---|---:|---:|---:|"]
    peaks = {}
    for n in SIZES:
        folder = work / f"memory_{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        pipeline = folder / "pipeline.yaml"
        pipeline.write_text(yaml.safe_dump(scale_pipeline(roots[n], n), sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = run_measured([sys.executable, "-m", "compress", "run", str(pipeline), "--quiet", "--run-dir",
                               str(folder / "run")], env, ROOT)
        if result["rc"] != 0:
            raise SystemExit(f"compress run on {n} images failed ({result['rc']}):\n{result['stderr'][-3000:]}")
        val = round(n * 0.1)
        peaks[n] = result
        lines.append(f"| {n:,} | {n - val:,} / {val:,} | {result['seconds']:.0f} | {result['largest_mb']:.0f} | "
                     f"{result['tree_mb']:.0f} |")
    small, large = peaks[min(SIZES)], peaks[max(SIZES)]
    for label, key in (("largest process", "largest_mb"), ("tree sum", "tree_mb")):
        ratio = large[key] / small[key]
        lines.append(f"\n{label}: {max(SIZES):,} / {min(SIZES):,} images = {ratio:.3f}x (target <= {RSS_TARGET}x: "
                     f"{'met' if ratio <= RSS_TARGET else 'MISSED'})")
    return lines


# ---------------------------------------------------------------- 2. loading throughput


def stream_split(images: Path, workers: int):
    from compress.config import DataConfig
    from compress.data import load_dataset

    started = time.perf_counter()  # after the imports: the time is the folder's listing and header checks
    cfg = DataConfig(source="imagefolder", path=images, val_fraction=0.2, image_size=SIDE, eval_resize=256,
                     mean=MEAN, std=STD, workers=workers)
    data = load_dataset(cfg, 0)
    return data.train, len(data.train) + len(data.val), time.perf_counter() - started


def torchvision_loader(images: Path, files: set[str], workers: int, batch: int):
    """torchvision's ImageFolder over the same files, the same steps as compress's eval transform."""
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    steps = v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                        v2.CenterCrop(SIDE), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize(MEAN, STD)])
    folder = datasets.ImageFolder(str(images), transform=steps)
    chosen = [i for i, (path, _) in enumerate(folder.samples) if path in files]
    subset = torch.utils.data.Subset(folder, chosen)
    return lambda: torch.utils.data.DataLoader(subset, batch_size=batch, num_workers=workers, shuffle=False)


def images_per_second(batches) -> float:
    started = time.perf_counter()
    seen = sum(len(x) for x, _ in batches)
    return seen / (time.perf_counter() - started)


def measure_throughput(images: Path, repeats: int, workers: int = 2, batch: int = 64) -> list[str]:
    split, opened, open_seconds = stream_split(images, workers)
    files = {split.records.name(i) for i in range(len(split))}
    make_loader = torchvision_loader(images, files, workers, batch)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(images_per_second(split.batches(batch)))
        theirs.append(images_per_second(make_loader()))
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    ratio = ours_median / theirs_median
    rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(ours, theirs))
    return [f"{len(split):,} train images of {images.name} (224x224 JPEG -> resize 256, centre crop 224, normalise), "
            f"{workers} workers, batch {batch}; compress opened the folder (the headers of all {opened:,} files "
            f"read) in {open_seconds:.2f} s before the first pass.\n",
            "| loader | images/s (median) | rounds (compress/torchvision) |", "|---|---:|---|",
            f"| compress StreamSplit.batches | {ours_median:.0f} | {rounds} |",
            f"| torchvision ImageFolder + DataLoader | {theirs_median:.0f} | |",
            f"\ncompress / torchvision = {ratio:.3f}x (target >= {THROUGHPUT_TARGET}x: "
            f"{'met' if ratio >= THROUGHPUT_TARGET else 'MISSED'})"]


# ---------------------------------------------------------------- 3. digits distill before/after


def code_before(work: Path) -> tuple[Path, str]:
    """The last commit's tree, unpacked by `git archive` (no worktree, no change to the repository)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    tree = work / "compress-before"
    stamp = tree / ".commit"
    if stamp.is_file() and stamp.read_text() == commit:
        return tree, commit
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit("git archive HEAD failed")
    stamp.write_text(commit)
    return tree, commit


def digits_pipeline() -> dict:
    """examples/digits/pipeline.yaml with the baseline left out and a one-run benchmark (after distill)."""
    config = yaml.safe_load((ROOT / "examples" / "digits" / "pipeline.yaml").read_text())
    config["stages"].pop("baseline", None)
    config["stages"]["benchmark"] = {"batch_sizes": [1], "warmup": 0, "warmup_seconds": 0, "runs": 1,
                                     "min_seconds": 0, "rounds": 1, "memory": False}
    config["teacher"]["train"]["progress"] = False
    config["stages"]["distill"]["progress"] = False
    return config


def imported_from(tree: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run([sys.executable, "-c", "import compress; print(compress.__file__)"], env=env, cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    return Path(found).resolve()


def distill_times(tree: Path, pipeline: Path, run_dir: Path) -> tuple[float, float]:
    """(distill stage seconds, median epoch seconds) of one fresh `compress run` with `tree` on the import path."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "compress", "run", str(pipeline), "--quiet", "--run-dir",
                           str(run_dir)], env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compress run with {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stage = json.loads((run_dir / "run.json").read_text())["stages"]["distill"]["seconds"]
    epochs = [json.loads(line)["seconds"] for line in
              (run_dir / "stages" / "distill" / "metrics.jsonl").read_text().splitlines()]
    return stage, statistics.median(epochs)


def measure_distill(work: Path, repeats: int) -> list[str]:
    before, commit = code_before(work)
    trees = {"before (HEAD)": before, "after (working tree)": ROOT}
    for tree in trees.values():
        if not imported_from(tree).is_relative_to(tree.resolve()):
            raise SystemExit(f"PYTHONPATH={tree} does not import compress from it")
    pipeline = work / "digits.yaml"
    pipeline.write_text(yaml.safe_dump(digits_pipeline(), sort_keys=False))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for index in range(repeats):
        for name, tree in trees.items():
            times[name].append(distill_times(tree, pipeline, work / f"digits_{index}_{name.split()[0]}"))
    lines = [f"before = commit {commit[:7]}; examples/digits/pipeline.yaml, distill 15 epochs; each cell the median "
             f"of {repeats} fresh runs, interleaved.\n",
             "| code | distill stage s (median) | epoch s (median) | stage s per run |", "|---|---:|---:|---|"]
    medians = {}
    for name, rows in times.items():
        stage = statistics.median(r[0] for r in rows)
        epoch = statistics.median(r[1] for r in rows)
        medians[name] = (stage, epoch)
        lines.append(f"| {name} | {stage:.2f} | {epoch:.3f} | {', '.join(f'{r[0]:.2f}' for r in rows)} |")
    (old_stage, old_epoch), (new_stage, new_epoch) = medians.values()
    lines.append(f"\nafter / before: stage {new_stage / old_stage:.3f}x, epoch {new_epoch / old_epoch:.3f}x "
                 f"(target <= {EPOCH_TARGET}x: {'met' if new_epoch / old_epoch <= EPOCH_TARGET else 'MISSED'})")
    return lines


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The model name in /proc/cpuinfo, with the vector extensions that decide the kernels' speed."""
    model, flags = platform.processor() or "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    shown = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if flag in flags]
    return f"{model} ({', '.join(shown) or 'no AVX2'})"


def machine_line() -> str:
    import torch

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}; {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
            f"{torch.__version__}; load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "compress-data-scale",
                        help="generated images and the unpacked last commit, reused by the next run")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (default: torch's own, all cores); on a machine others "
                             "load, 1 keeps the timings steady")
    parser.add_argument("--only", choices=["memory", "throughput", "distill"], action="append",
                        help="run only this part (repeatable); default all three")
    args = parser.parse_args()
    parts = args.only or ["memory", "throughput", "distill"]
    if args.threads is not None:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every compress run below
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    threads = args.threads if args.threads is not None else "torch default"
    print(f"start: {machine_line()}; threads: {threads}\n")
    roots = generate_images(args.cache)
    work = args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    if "memory" in parts:
        print("### 1. Peak memory of `compress run`, 2k vs 20k images\n")
        print("\n".join(measure_memory(roots, work)) + "\n", flush=True)
    if "throughput" in parts:
        print("### 2. Loading throughput\n")
        print("\n".join(measure_throughput(roots[min(SIZES)], args.repeats)) + "\n", flush=True)
    if "distill" in parts:
        print("### 3. Digits distill stage, before and after streaming\n")
        print("\n".join(measure_distill(work, args.repeats)) + "\n", flush=True)
    print(f"end: {machine_line()}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
