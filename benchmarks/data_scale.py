"""Image-folder data at scale: peak memory, loading throughput, and the digits distill epoch before/after streaming.

1. Peak resident memory of `compress run` on a generated ImageFolder of 2,000 and of 20,000
   JPEGs (224x224, 10 classes; trained at 64x64: 1 teacher epoch, 1 distill epoch, one ONNX
   Runtime build, a benchmark stage of one timed run). Each run is a fresh process; memory is
   read two ways: the largest single process of the tree (`os.wait4`'s ru_maxrss, DataLoader
   workers included) and the sums of RSS and of PSS over the whole tree (psutil, sampled every
   0.2 s). Streaming means the 20k run stays within 1.25x of the 2k run.
2. Loading throughput (images/s): compress's StreamSplit (`load_dataset(...).train.batches(64)`)
   against torchvision's ImageFolder + DataLoader over the same files with the same steps
   (decode, resize the shorter side to 256, centre crop 224, normalise), 2 workers, batch 64;
   interleaved, median of --repeats. Target: at least 0.9x torchvision.
3. The distill stage of examples/digits/pipeline.yaml with this tree against the code before the
   streaming change (the parent of the commit that added compress/data/streaming.py, or --before;
   `git archive`d under --cache, the repository is not touched), same interpreter, interleaved,
   median of --repeats; only stages after distill are lightened (no baseline, a one-run
   benchmark), which do not change what distill does. Target: new at most 1.10x old.

The generated images are kept under --cache and reused by the next run.

    python benchmarks/data_scale.py [--repeats 3] [--threads 1] [--cache /tmp/compress-data-scale]   # about 15 minutes
    python benchmarks/data_scale.py --smoke   # 100 and 200 JPEGs of 32x32, one run each, 1-epoch digits: seconds
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
SMOKE = {"repeats": 1, "memory_repeats": 1, "threads": 1}


def use_smoke_sizes() -> None:
    """--smoke: the fewest, smallest images every part still runs on (ten classes, a val image in each)."""
    global SIZES, SIDE
    SIZES, SIDE = (100, 200), 32


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
    """Run `command` to its end: exit code, wall seconds, ru_maxrss of the tree's largest process, and the peak
    over time of the tree's summed RSS (pages shared between processes counted in each) and summed PSS (shared
    pages split between their processes: what the tree really holds)."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    peak_rss = peak_pss = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        rss = pss = 0
        for member in tree:
            try:
                memory = member.memory_full_info()
                rss, pss = rss + memory.rss, pss + memory.pss
            except psutil.Error:
                pass  # a worker that ended between the listing and the reading
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace")
    return {"rc": process.returncode, "seconds": time.perf_counter() - started,
            "largest_mb": usage.ru_maxrss / 1024, "rss_mb": peak_rss / 2**20, "pss_mb": peak_pss / 2**20,
            "stderr": errors}


def measure_memory(roots: dict[int, Path], work: Path, repeats: int) -> list[str]:
    """Each size `repeats` times, interleaved; the ratio compares the highest peak of each size."""
    lines = ["| images | train / val | run | wall s | largest process peak MB | tree peak RSS MB (sum) | "
             "tree peak PSS MB (sum) |", "|---:|---|---:|---:|---:|---:|---:|"]
    peaks: dict[int, list[dict]] = {n: [] for n in SIZES}
    for attempt in range(repeats):
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
            peaks[n].append(result)
            lines.append(f"| {n:,} | {n - val:,} / {val:,} | {attempt + 1} | {result['seconds']:.0f} | "
                         f"{result['largest_mb']:.0f} | {result['rss_mb']:.0f} | {result['pss_mb']:.0f} |")
    lines.append("")
    for label, key in (("largest process", "largest_mb"), ("tree RSS sum", "rss_mb"), ("tree PSS sum", "pss_mb")):
        small, large = (max(run[key] for run in peaks[n]) for n in (min(SIZES), max(SIZES)))
        ratio = large / small
        lines.append(f"- {label}: {max(SIZES):,} / {min(SIZES):,} images = {ratio:.3f}x (highest of each; target "
                     f"<= {RSS_TARGET}x: {'met' if ratio <= RSS_TARGET else 'MISSED'})")
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
    # One short untimed pass each: compress's workers fork from a forkserver that starts (and imports torch)
    # on first use, once per process; the page cache gets the files.
    images_per_second(split.subset(range(min(2 * batch, len(split)))).batches(batch))
    images_per_second(make_loader())
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(images_per_second(split.batches(batch)))
        theirs.append(images_per_second(make_loader()))
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    ratio = ours_median / theirs_median
    rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(ours, theirs))
    return [f"{len(split):,} train images of {images.name} ({SIDE}x{SIDE} JPEG -> resize 256, centre crop {SIDE}, normalise), "
            f"{workers} workers, batch {batch}; compress opened the folder (the headers of all {opened:,} files "
            f"read) in {open_seconds:.2f} s; one untimed pass of each first.\n",
            "| loader | images/s (median) | rounds (compress/torchvision) |", "|---|---:|---|",
            f"| compress StreamSplit.batches | {ours_median:.0f} | {rounds} |",
            f"| torchvision ImageFolder + DataLoader | {theirs_median:.0f} | |",
            f"\ncompress / torchvision = {ratio:.3f}x (target >= {THROUGHPUT_TARGET}x: "
            f"{'met' if ratio >= THROUGHPUT_TARGET else 'MISSED'})"]


# ---------------------------------------------------------------- 3. digits distill before/after


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit_before_streaming() -> str:
    """The parent of the commit that added compress/data/streaming.py (HEAD while that code is uncommitted)."""
    added = git("log", "--diff-filter=A", "--format=%H", "--", "compress/data/streaming.py").splitlines()
    return git("rev-parse", f"{added[-1]}^" if added else "HEAD")


def code_before(work: Path, commit: str) -> Path:
    """`commit`'s tree, unpacked by `git archive` (no worktree, no change to the repository)."""
    tree = work / "compress-before"
    stamp = tree / ".commit"
    if stamp.is_file() and stamp.read_text() == commit:
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit("git archive HEAD failed")
    stamp.write_text(commit)
    return tree


def digits_pipeline(epochs: int | None = None) -> dict:
    """examples/digits/pipeline.yaml with the baseline left out and a one-run benchmark (after distill); `epochs`
    replaces the teacher's and the student's (--smoke), which changes nothing distill does but its length."""
    config = yaml.safe_load((ROOT / "examples" / "digits" / "pipeline.yaml").read_text())
    if epochs is not None:  # --smoke: also one engine and no gates (a 1-epoch student misses them: exit 3)
        config["teacher"]["train"]["epochs"] = config["stages"]["distill"]["epochs"] = epochs
        config["stages"]["build"]["targets"] = ["onnxruntime:fp32"]
        config.pop("gates", None)
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


def distill_times(tree: Path, pipeline: Path, run_dir: Path) -> tuple[float, list[float]]:
    """(distill stage seconds, seconds of each epoch) of one fresh `compress run` with `tree` on the import path."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "compress", "run", str(pipeline), "--quiet", "--run-dir",
                           str(run_dir)], env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compress run with {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stage = json.loads((run_dir / "run.json").read_text())["stages"]["distill"]["seconds"]
    epochs = [json.loads(line)["seconds"] for line in
              (run_dir / "stages" / "distill" / "metrics.jsonl").read_text().splitlines()]
    return stage, epochs


def describe_trees(commit: str) -> str:
    changed = git("status", "--porcelain", "--", "compress", "deploy")
    here = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if changed else "")
    return f"before = commit {commit[:7]} ({git('log', '-1', '--format=%s', commit)[:60]}...); this tree = {here}"


def measure_distill(work: Path, repeats: int, commit: str, epochs: int | None = None) -> list[str]:
    before = code_before(work, commit)
    trees = {f"before ({commit[:7]})": before, "after (this tree)": ROOT}
    for tree in trees.values():
        if not imported_from(tree).is_relative_to(tree.resolve()):
            raise SystemExit(f"PYTHONPATH={tree} does not import compress from it")
    pipeline = work / "digits.yaml"
    pipeline.write_text(yaml.safe_dump(digits_pipeline(epochs), sort_keys=False))
    runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in trees}
    for index in range(repeats):
        for label, tree in trees.items():
            runs[label].append(distill_times(tree, pipeline, work / f"digits_{index}_{label.split()[0]}"))
    lines = [f"{describe_trees(commit)}; examples/digits/pipeline.yaml, distill {epochs or 15} epochs; medians over {repeats} "
             "fresh runs, interleaved (epoch s: the median of each run's epochs, then over runs; fastest epoch: "
             "the least disturbed by other load).\n",
             "| code | distill stage s | epoch s | fastest epoch s | stage s per run |", "|---|---:|---:|---:|---|"]
    medians = {}
    for label, rows in runs.items():
        stage = statistics.median(r[0] for r in rows)
        epoch = statistics.median(statistics.median(r[1]) for r in rows)
        fastest = min(min(r[1]) for r in rows)
        medians[label] = (stage, epoch, fastest)
        lines.append(f"| {label} | {stage:.2f} | {epoch:.3f} | {fastest:.3f} | "
                     f"{', '.join(f'{r[0]:.2f}' for r in rows)} |")
    (old_stage, old_epoch, old_fastest), (new_stage, new_epoch, new_fastest) = medians.values()
    ratio = new_epoch / old_epoch
    lines.append(f"\nafter / before: epoch {ratio:.3f}x (target <= {EPOCH_TARGET}x: "
                 f"{'met' if ratio <= EPOCH_TARGET else 'MISSED'}); stage {new_stage / old_stage:.3f}x, fastest epoch "
                 f"{new_fastest / old_fastest:.3f}x")
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
    parser.add_argument("--memory-repeats", type=int, default=2, help="runs of each size for the peak memory")
    parser.add_argument("--cache", type=Path, default=None,
                        help="generated images and the unpacked last commit, reused by the next run (default "
                             f"{Path(tempfile.gettempdir()) / 'compress-data-scale'}; with --smoke a temporary folder)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (default: torch's own, all cores); on a machine others "
                             "load, 1 keeps the timings steady")
    parser.add_argument("--before", default=None,
                        help="the commit to compare the distill stage with (default: the parent of the commit that "
                             "added compress/data/streaming.py)")
    parser.add_argument("--only", choices=["memory", "throughput", "distill"], action="append",
                        help="run only this part (repeatable); default all three")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one run each: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
        use_smoke_sizes()
    if args.threads is not None:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every compress run below
        torch.set_num_threads(args.threads)
    if args.smoke and args.cache is None:
        with tempfile.TemporaryDirectory(prefix="data_scale_") as cache:
            run_parts(args, Path(cache))
    else:
        run_parts(args, args.cache or Path(tempfile.gettempdir()) / "compress-data-scale")


def run_parts(args, cache: Path) -> None:
    parts = args.only or ["memory", "throughput", "distill"]
    started = time.perf_counter()
    threads = args.threads if args.threads is not None else "torch default"
    print(f"start: {machine_line()}; threads: {threads}\n")
    roots = generate_images(cache)
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    if "memory" in parts:
        print(f"### 1. Peak memory of `compress run`, {min(SIZES):,} vs {max(SIZES):,} images\n")
        print("\n".join(measure_memory(roots, work, args.memory_repeats)) + "\n", flush=True)
    if "throughput" in parts:
        print("### 2. Loading throughput\n")
        print("\n".join(measure_throughput(roots[min(SIZES)], args.repeats)) + "\n", flush=True)
    if "distill" in parts:
        print("### 3. Digits distill stage, before and after streaming\n")
        before = git("rev-parse", args.before) if args.before else commit_before_streaming()
        print("\n".join(measure_distill(work, args.repeats, before, 1 if args.smoke else None)) + "\n", flush=True)
    print(f"end: {machine_line()}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
