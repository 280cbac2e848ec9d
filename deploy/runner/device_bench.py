"""Measurements on the device: smoke test, benchmark (the host's harness), TensorRT build and timing, power.

Travels in the bundle beside runner.py, which loads it from the release folder; on the host the
same file is part of the deploy.runner package. TensorRT rows are timed by trtexec, one run per
round, each inference's latency read from its --exportTimes trace and put through the same
harness as every other row; on a Jetson, tegrastats samples the board's power meanwhile. A text
model is timed with its input specs at the recorded max_length (every input padded full), so its
rows also give tokens a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

try:  # on the host: the deploy.runner package
    from . import harness, inference, releases, runner
except ImportError:  # on the device: loaded by runner.py from the release folder
    import harness
    import inference
    import releases
    import runner


# ---------------------------------------------------------------- power (tegrastats)


class PowerSampler:
    """Samples the board's input rail with tegrastats while a benchmark runs (Jetson only)."""

    RAIL = re.compile(r"\b(VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/(\d+)")

    def __init__(self, tegrastats: str | None, interval_ms: int = 100):
        self.tegrastats, self.interval_ms = tegrastats, interval_ms
        self.samples: list[float] = []
        self.rail = None
        self.process = None

    def __enter__(self):
        if self.tegrastats:
            self.process = subprocess.Popen([self.tegrastats, "--interval", str(self.interval_ms)],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self):
        for line in self.process.stdout:
            match = self.RAIL.search(line)
            if match:
                self.rail = match.group(1)
                self.samples.append(float(match.group(2)))

    def __exit__(self, *exc):
        if self.process:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.thread.join(timeout=5)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"rail": self.rail, "mean_mw": sum(self.samples) / len(self.samples),
                "max_mw": max(self.samples), "samples": len(self.samples)}


# ---------------------------------------------------------------- benchmark


TRTEXEC_LATENCY = re.compile(r"(?:^|\]\s*)Latency: min = ([\d.e+-]+) ms, max = ([\d.e+-]+) ms, mean = ([\d.e+-]+) ms, "
                             r"median = ([\d.e+-]+) ms(.*)")


TRTEXEC_WARMUP_MS = 200


def parse_trtexec_timing(text: str, batch: int) -> dict:
    """The `=== Performance summary ===` of `trtexec --loadEngine` (latency per enqueued batch)."""
    summary = text.split("=== Performance summary ===")[-1]
    match = None
    for line in summary.splitlines():  # "Latency:" itself, not "H2D Latency:" or "D2H Latency:"
        match = TRTEXEC_LATENCY.search(line.strip())
        if match:
            break
    if not match:
        raise runner.RunnerError("trtexec printed no latency summary")
    rest = match.group(5)
    pct = {int(p): float(v) for p, v in re.findall(r"percentile\((\d+)%\) = ([\d.e+-]+) ms", rest)}
    p50 = float(match.group(4))
    stats = {"mean": float(match.group(3)), "min": float(match.group(1)), "max": float(match.group(2)),
             "p50": p50, "p90": pct.get(90), "p99": pct.get(99)}
    qps = re.search(r"Throughput: ([\d.e+-]+) qps", summary)
    throughput = float(qps.group(1)) * batch if qps else batch * 1000.0 / p50
    return {"latency_ms": stats, "throughput_per_s": throughput, "timer": "trtexec"}


def time_trtexec(release: Path, manifest: dict, batch: int, tools: str | None, seconds: float,
                 iterations: int | None = None, export_times: Path | None = None) -> dict:
    """One `trtexec --loadEngine` run (a fresh load); its summary, and each inference's latency in
    `export_times` when given."""
    trtexec = runner.which("trtexec", tools)
    if not trtexec:
        raise runner.RunnerError("trtexec not found on this device")
    argv = [trtexec, f"--loadEngine={release / manifest['engine']['file']}", trtexec_shapes(manifest, batch),
            "--percentile=50,90,99"]
    if iterations:
        argv += ["--warmUp=0", "--duration=0", f"--iterations={iterations}"]
    else:
        argv += [f"--warmUp={TRTEXEC_WARMUP_MS}", f"--duration={max(1, int(round(seconds)))}"]
    if export_times is not None:
        argv.append(f"--exportTimes={export_times}")
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PATH=runner.tool_path(tools)))
    if done.returncode != 0:
        raise runner.RunnerError(f"trtexec --loadEngine failed (exit {done.returncode}): {runner.tail(done.stdout + done.stderr)}")
    return parse_trtexec_timing(done.stdout, batch)


def sequence_length(manifest: dict) -> int | None:
    """The length a text model is timed at (its recorded max_length); None for other models."""
    text = (manifest.get("preprocessing") or {}).get("text")
    return int(text["max_length"]) if text else None


def trtexec_shapes(manifest: dict, batch: int) -> str:
    """`--shapes=` for every input at `batch`: an image's (batch, C, H, W), each token-id input's (batch, max_length)."""
    length = sequence_length(manifest)
    specs = manifest["inputs"] if length is not None else [manifest["input"]]
    shapes = []
    for spec in specs:
        dims = [batch] + [d if length is None or (isinstance(d, int) and d > 0) else length for d in spec["shape"][1:]]
        shapes.append(f"{spec['name']}:{'x'.join(str(d) for d in dims)}")
    return "--shapes=" + ",".join(shapes)


def exported_latencies(path: Path) -> list[float]:
    """Per-inference `latencyMs` of a `trtexec --exportTimes` trace (a JSON list of timing records)."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [float(r["latencyMs"]) for r in records
            if isinstance(r, dict) and isinstance(r.get("latencyMs"), (int, float))]


def time_trtexec_rounds(release: Path, manifest: dict, batch: int, tools: str | None, seconds: float, rounds: int,
                        harness) -> dict:
    """`rounds` trtexec runs, each loading the engine afresh, timed like every other row.

    Each run's per-inference latencies (`--exportTimes`) go through the host's harness, so a TensorRT
    row has the same p50/p90/p99, rounds and ± as an ONNX Runtime one. A trtexec that writes no trace
    leaves the row as its summary says, without a ±.
    """
    round_times, throughputs = [], []
    length = sequence_length(manifest)
    with tempfile.TemporaryDirectory(prefix="trtexec-") as folder:
        for index in range(rounds):
            trace = Path(folder) / f"times-{index}.json"
            summary = time_trtexec(release, manifest, batch, tools, seconds, export_times=trace)
            times = exported_latencies(trace)
            if not times:
                runner.log("trtexec wrote no --exportTimes trace: latency from its summary, without a ±")
                if length is not None:
                    summary.update(sequence_length=length, tokens_per_s=harness.tokens_per_second(
                        batch, length, summary["latency_ms"]["p50"]))
                return summary
            round_times.append(times)
            throughputs.append(summary["throughput_per_s"])
    row = harness.latency_row(batch, round_times, None, length)
    row.update(throughput_per_s=sorted(throughputs)[len(throughputs) // 2], timer="trtexec",
               warmup_ms=TRTEXEC_WARMUP_MS)
    return row


def bench(release: Path, batch_sizes: list[int] | None, runs: int | None, warmup: int | None,
          min_seconds: float | None, tools: str | None, threads: int | None, rounds: int | None = None) -> dict:
    """Accuracy on the val sample, then latency per batch size in rounds of fresh loads, as on the host."""
    manifest = releases.read_manifest(release)
    settings = manifest.get("bench", {})
    batch_sizes = batch_sizes or settings.get("batch_sizes") or [1]
    runs = runs if runs is not None else settings.get("runs", 30)
    warmup = warmup if warmup is not None else settings.get("warmup", 5)
    min_seconds = min_seconds if min_seconds is not None else settings.get("min_seconds", 0.5)
    rounds = rounds if rounds is not None else settings.get("rounds", 3)
    runtime = manifest["runtime"]
    size_mb = round(inference.model_path(release, manifest).stat().st_size / 1e6, 4)
    acc, providers = None, None
    try:
        with inference.open_release(release, manifest, threads) as session:
            providers = session.providers
            acc = inference.sample_accuracy(release, manifest, session)
    except runner.RunnerError as error:
        if runtime != "tensorrt":
            raise
        runner.log(f"accuracy on the device skipped: {error}")
        acc = {"top1": None, "top5": None, "agreement_with_host": None, "skipped": str(error)}
    tegrastats = runner.which("tegrastats", tools)
    rows = []
    for batch in batch_sizes:
        with PowerSampler(tegrastats) as power:
            if runtime == "tensorrt":
                timing = time_trtexec_rounds(release, manifest, batch, tools, max(min_seconds, 1.0), rounds, harness)
            else:
                latency = harness.LatencySettings(warmup=warmup, warmup_seconds=settings.get("warmup_seconds", 0.2),
                                                  runs=runs, min_seconds=min_seconds)
                ((timing,),) = harness.measure_rounds([lambda: inference.open_release(release, manifest, threads)],
                                                      timed_inputs(manifest), [batch], latency, rounds,
                                                      sequence_length=sequence_length(manifest))
                timing["timer"] = "runner"
        row = {"model": manifest["model"], "artifact": manifest["artifact"], "backend": runtime,
               "precision": manifest["precision"], "batch_size": batch, **timing, "accuracy": acc,
               "params": manifest.get("params"), "macs": manifest.get("macs"), "size_mb": size_mb,
               "providers": providers, "power": power.summary()}
        if row["power"]:
            row["energy_mj_per_sample"] = row["power"]["mean_mw"] * row["latency_ms"]["p50"] / 1000.0 / batch
        rows.append(row)
        spread = timing["latency_ms"].get("p50_spread")
        runner.log(f"b{batch}: p50 {timing['latency_ms']['p50']:.3f} ms"
                   + (f" ± {spread:.3f}" if spread is not None else ""))
    return {"rows": rows}


def timed_inputs(manifest: dict):
    """What the harness makes random inputs of: a text model's input specs, an image's per-sample shape."""
    if sequence_length(manifest) is not None:
        return manifest["inputs"]
    return tuple(manifest["input"]["shape"][1:])


def smoke(release: Path, tools: str | None = None) -> dict:
    """One inference on two samples of the val sample: finite logits of the right shape."""
    import numpy as np

    manifest = releases.read_manifest(release)
    sample = inference.load_sample(release, manifest)
    tokenization = inference.check_sample(release, manifest, sample)  # a text model's token ids, checked here
    try:
        session = inference.open_release(release, manifest)
    except runner.RunnerError as error:
        if manifest["runtime"] != "tensorrt":
            raise
        # No TensorRT Python bindings (or cuda-python): let trtexec load and run the engine once.
        runner.log(f"TensorRT Python inference unavailable ({error}); smoke test with trtexec")
        time_trtexec(release, manifest, 1, tools, 0, iterations=1)
        return {"smoke": "ok", "providers": ["trtexec"], "tokenization": tokenization}
    x = inference.task_steps(release, manifest).sample_inputs(sample, inference.input_names(manifest))
    first = {name: value[:2] for name, value in x.items()} if isinstance(x, dict) else x[:2]
    rows = len(sample["y"][:2])
    with session:
        logits = session.infer(first)
    classes = len(manifest["labels"])
    if logits.shape != (rows, classes) or not np.isfinite(logits).all():
        raise runner.RunnerError(f"smoke inference: output {logits.shape} is not ({rows}, {classes}) finite logits")
    return {"smoke": "ok", "output_shape": list(logits.shape), "providers": session.providers,
            "tokenization": tokenization}


# ---------------------------------------------------------------- engine build (TensorRT)


def build_engine(release: Path, tools: str | None) -> dict:
    """Run the bundle's build_engine.sh (trtexec): an engine is tied to the GPU and TensorRT that build it."""
    manifest = releases.read_manifest(release)
    engine = manifest.get("engine")
    if not engine:
        raise runner.RunnerError("this bundle has no build_engine.sh (runtime is not tensorrt)")
    if not runner.which("trtexec", tools):
        raise runner.RunnerError("trtexec not found on this device (JetPack's TensorRT is in "
                                 "/usr/src/tensorrt/bin); deploy with --runtime onnxruntime instead")
    env = dict(os.environ, PATH=runner.tool_path(tools))
    started = time.perf_counter()
    with open(release / "build.log", "w") as out:
        code = subprocess.call(["bash", str(release / engine["script"])], cwd=release, stdout=out,
                               stderr=subprocess.STDOUT, env=env)
    seconds = round(time.perf_counter() - started, 3)
    if code != 0 or not (release / engine["file"]).is_file():
        log_tail = runner.tail((release / "build.log").read_text())
        raise runner.RunnerError(f"trtexec engine build failed (exit {code}): {log_tail}")
    return {"seconds": seconds, "engine_sha256": releases.sha256_file(release / engine["file"]),
            "engine_mb": round((release / engine["file"]).stat().st_size / 1e6, 4)}


