#!/usr/bin/env python3
"""On-device runner shipped in every bundle: Python 3.8+, numpy and whichever runtime the device has.

No torch, no import of the toolchain: this file is copied to the device and also piped to
`python3 -` over SSH for the release steps. The one toolchain file it uses, the numpy-only latency
harness (compress/bench.py), travels in the bundle as bench.py, so the device is timed as the host is. Every command prints one JSON document on the last
line of stdout (`{"error": ...}` and exit 1 on failure); progress goes to stderr.

  python3 runner.py infer  RELEASE_DIR INPUT.npy [--output OUT.npy] [--preprocessed]
  python3 runner.py bench  RELEASE_DIR [--batch-sizes 1,8] [--runs 30]
  python3 runner.py verify RELEASE_DIR          (sha256 of every file against manifest.json)
  python3 runner.py probe  [--sysroot DIR]      (host, arch, runtimes, Jetson L4T/TensorRT/power mode)
  python3 runner.py status ROOT | rollback ROOT | activate ROOT INCOMING VERSION
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MANIFEST = "manifest.json"
RELEASES = "releases"
CURRENT = "current"
INCOMING_PREFIX = ".incoming-"
HARNESS = "bench.py"
# Files a release gains on the device after verification (never uploaded, never in the manifest).
DEVICE_FILES = ("model.engine", "build.log", "device.json")
TRT_DEFAULT_DIRS = ("/usr/src/tensorrt/bin",)
STALE_INCOMING_SECONDS = 600
# JetPack release of each L4T release (NVIDIA's Jetson archive); the longest matching prefix wins.
JETPACK_OF_L4T = {"36.4.4": "6.2.1", "36.4.3": "6.2", "36.4": "6.1", "36.3": "6.0", "36.2": "6.0 DP",
                  "35.6": "5.1.4", "35.5": "5.1.3", "35.4": "5.1.2", "35.3": "5.1.1", "35.2": "5.1",
                  "35.1": "5.0.2", "32.7": "4.6.x", "32.6": "4.6", "32.5": "4.5.x"}


class RunnerError(Exception):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(release: Path) -> dict:
    path = release / MANIFEST
    if not path.is_file():
        raise RunnerError(f"{path}: no manifest")
    return json.loads(path.read_text())


def tool_path(extra: str | None) -> str:
    """PATH for device tools: extra dirs first, then the usual TensorRT location, then PATH."""
    parts = [p for p in (extra or "").split(os.pathsep) if p] + list(TRT_DEFAULT_DIRS)
    return os.pathsep.join(parts + [os.environ.get("PATH", "/usr/bin:/bin")])


def which(name: str, tools: str | None) -> str | None:
    return shutil.which(name, path=tool_path(tools))


# ---------------------------------------------------------------- verify


def verify(release: Path, manifest_sha256: str | None = None) -> dict:
    """Every manifest file present with its sha256; nothing unexpected beside them."""
    manifest = read_manifest(release)
    if manifest_sha256 and sha256_file(release / MANIFEST) != manifest_sha256:
        raise RunnerError(f"checksum mismatch: {MANIFEST}")
    expected = manifest["files"]
    for name, digest in sorted(expected.items()):
        path = release / name
        if not path.is_file():
            raise RunnerError(f"checksum: {name} is missing")
        actual = sha256_file(path)
        if actual != digest:
            raise RunnerError(f"checksum mismatch: {name} (sha256 {actual[:12]}, manifest {digest[:12]})")
    present = {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file()}
    extra = sorted(present - set(expected) - {MANIFEST} - set(DEVICE_FILES))
    if extra:
        raise RunnerError(f"checksum: unexpected file {extra[0]}")
    return {"verified": len(expected)}


# ---------------------------------------------------------------- probe


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def parse_l4t(text: str | None) -> dict | None:
    """`# R36 (release), REVISION: 4.3, ...` -> {"l4t": "36.4.3", "jetpack": "6.2"}."""
    if not text:
        return None
    major = re.search(r"R(\d+)", text)
    revision = re.search(r"REVISION:\s*([\d.]+)", text)
    if not major:
        return None
    l4t = major.group(1) + ("." + revision.group(1).rstrip(".") if revision else "")
    jetpack = None
    for prefix in sorted(JETPACK_OF_L4T, key=len, reverse=True):
        if l4t == prefix or l4t.startswith(prefix + "."):
            jetpack = JETPACK_OF_L4T[prefix]
            break
    board = re.search(r"BOARD:\s*([^,]+)", text)
    return {"l4t": l4t, "jetpack": jetpack, "board": board.group(1).strip() if board else None}


def decode_trt_version(number: int) -> str:
    """trtexec prints `[TensorRT v100300]` (10.3.0) or `[TensorRT v8601]` (8.6.1)."""
    if number >= 10000:
        return f"{number // 10000}.{(number // 100) % 100}.{number % 100}"
    return f"{number // 1000}.{(number // 100) % 10}.{number % 100}"


def run_tool(argv: list[str], tools: str | None, timeout: float = 30) -> str:
    env = dict(os.environ, PATH=tool_path(tools))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def tensorrt_version(tools: str | None) -> tuple[str | None, str | None]:
    version = module_version("tensorrt")
    if version:
        return version, "python"
    trtexec = which("trtexec", tools)
    if trtexec:
        match = re.search(r"TensorRT v(\d+)", run_tool([trtexec, "--help"], tools))
        if match:
            return decode_trt_version(int(match.group(1))), "trtexec"
    return None, None


def power_mode(tools: str | None) -> dict | None:
    nvpmodel = which("nvpmodel", tools)
    if not nvpmodel:
        return None
    out = run_tool([nvpmodel, "-q"], tools)
    match = re.search(r"NV Power Mode:\s*(.+)", out)
    if not match:
        return None
    mode_id = re.search(r"NV Power Mode:.*\n\s*(\d+)", out)
    return {"name": match.group(1).strip(), "id": int(mode_id.group(1)) if mode_id else None}


def module_version(name: str) -> str | None:
    """Version of an installed module without importing it (importing openvino alone takes a second)."""
    import importlib.util

    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        from importlib import metadata

        for dist in (name, f"{name}-gpu", f"{name}-cu12", f"{name}-cu11"):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    except ImportError:
        pass
    try:
        return getattr(__import__(name), "__version__", "unknown")
    except Exception:
        return None


def probe(sysroot: str | None, tools: str | None) -> dict:
    root = Path(sysroot or "/").expanduser()
    l4t = parse_l4t(read_text(root / "etc" / "nv_tegra_release"))
    trt, trt_source = tensorrt_version(tools)
    return {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": module_version("numpy"),
        "onnxruntime": module_version("onnxruntime"),
        "openvino": module_version("openvino"),
        "tensorrt": trt,
        "tensorrt_source": trt_source,
        "jetson": l4t is not None,
        "model": read_text(root / "proc" / "device-tree" / "model"),
        "l4t": l4t["l4t"] if l4t else None,
        "jetpack": l4t["jetpack"] if l4t else None,
        "power_mode": power_mode(tools),
        "trtexec": which("trtexec", tools),
        "tegrastats": which("tegrastats", tools),
        "rsync": shutil.which("rsync"),
    }


# ---------------------------------------------------------------- sessions


class RunnerSession:
    """A loaded model; a context manager, so the harness can load one afresh per round."""

    providers: list[str] = []

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OnnxRuntimeSession(RunnerSession):
    def __init__(self, path: Path, threads: int | None, precision: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, x):
        import numpy as np

        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


# As on the host (deploy/engines/openvino.py): the CPU plugin would compute an fp32 model in bf16
# on CPUs that have it, so fp32 and int8 ask for f32.
OPENVINO_PRECISION = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


class OpenVinoSession(RunnerSession):
    def __init__(self, path: Path, threads: int | None, precision: str | None = None):
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision in OPENVINO_PRECISION:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[precision]
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.output = self.compiled.output(0)
        self.providers = ["CPU"]

    def infer(self, x):
        import numpy as np

        return self.compiled([np.ascontiguousarray(x, dtype=np.float32)])[self.output]


class TensorRtSession(RunnerSession):
    """A built engine run with the TensorRT Python API and CUDA runtime bindings (cuda-python)."""

    def __init__(self, path: Path, threads: int | None, precision: str | None = None):
        import tensorrt as trt

        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart = cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.input_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        self.stream = self._check(cudart.cudaStreamCreate())
        self.providers = ["TensorRT"]

    def _check(self, result):
        error, *value = result
        if int(error) != 0:
            raise RunnerError(f"CUDA error {error}")
        return value[0] if value else None

    def infer(self, x):
        import numpy as np

        cudart = self.cudart
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype)
        d_in = self._check(cudart.cudaMalloc(x.nbytes))
        d_out = self._check(cudart.cudaMalloc(out.nbytes))
        try:
            h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self.stream))
            self.context.set_tensor_address(self.input_name, int(d_in))
            self.context.set_tensor_address(self.output_name, int(d_out))
            if not self.context.execute_async_v3(int(self.stream)):
                raise RunnerError("TensorRT execution failed")
            self._check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            cudart.cudaFree(d_in)
            cudart.cudaFree(d_out)
        return out.astype(np.float32)


SESSIONS = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVinoSession, "tensorrt": TensorRtSession}


def open_session(release: Path, manifest: dict, threads: int | None = None):
    runtime = manifest["runtime"]
    model = release / (manifest["engine"]["file"] if runtime == "tensorrt" else manifest["model_file"])
    if not model.is_file():
        raise RunnerError(f"{model}: not found" + (" (run build_engine.sh first)" if runtime == "tensorrt" else ""))
    try:
        return SESSIONS[runtime](model, threads, manifest.get("precision"))
    except ImportError as error:
        raise RunnerError(f"runtime {runtime} cannot be imported on this device: {error}") from None


# ---------------------------------------------------------------- accuracy, smoke, infer


def load_sample(release: Path, manifest: dict):
    import numpy as np

    with np.load(release / manifest["val_sample"], allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def predict(session, x, batch: int = 64):
    import numpy as np

    return np.concatenate([session.infer(x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(logits, labels, host_top1) -> dict:
    import numpy as np

    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1)
    return {"top1": float((top[:, 0] == labels).mean()),
            "top5": float((top[:, :k] == labels[:, None]).any(axis=1).mean()),
            "agreement_with_host": float((top[:, 0] == host_top1).mean()),
            "samples": int(len(labels))}


def smoke(release: Path, tools: str | None = None) -> dict:
    import numpy as np

    manifest = read_manifest(release)
    sample = load_sample(release, manifest)
    try:
        session = open_session(release, manifest)
    except RunnerError as error:
        if manifest["runtime"] != "tensorrt":
            raise
        # No TensorRT Python bindings (or cuda-python): let trtexec load and run the engine once.
        log(f"TensorRT Python inference unavailable ({error}); smoke test with trtexec")
        time_trtexec(release, manifest, 1, tools, 0, iterations=1)
        return {"smoke": "ok", "providers": ["trtexec"]}
    logits = session.infer(sample["x"][:2])
    classes = len(manifest["labels"])
    if logits.shape != (min(2, len(sample["x"])), classes) or not np.isfinite(logits).all():
        raise RunnerError(f"smoke inference: output {logits.shape} is not ({len(sample['x'][:2])}, {classes}) "
                          "finite logits")
    return {"smoke": "ok", "output_shape": list(logits.shape), "providers": session.providers}


def preprocess(x, manifest: dict):
    import numpy as np

    pre = manifest["preprocessing"]
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(manifest["input"]["shape"]) - 1:
        x = x[None]
    mean = np.asarray(pre["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre["std"], dtype=np.float32)[None, :, None, None]
    return (x - mean) / std


def infer(release: Path, input_path: Path, output: Path | None, preprocessed: bool) -> dict:
    import numpy as np

    manifest = read_manifest(release)
    x = np.load(input_path, allow_pickle=False)
    x = x.astype(np.float32) if preprocessed else preprocess(x, manifest)
    logits = predict(open_session(release, manifest), x)
    if output:
        np.save(output, logits)
    labels = manifest["labels"]
    return {"predictions": [labels[i] for i in logits.argmax(1).tolist()], "output": str(output) if output else None}


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


def load_harness(release: Path):
    """The toolchain's latency harness (compress/bench.py, numpy only), shipped in the bundle as bench.py.

    The device is timed by the same code as the host: warm-up, rounds of fresh loads, the p50's ±.
    """
    import importlib.util

    path = release / HARNESS
    if not path.is_file():
        raise RunnerError(f"{path}: not found (this release predates the shared harness; deploy it again)")
    spec = importlib.util.spec_from_file_location("compress_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


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
        raise RunnerError("trtexec printed no latency summary")
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
    trtexec = which("trtexec", tools)
    if not trtexec:
        raise RunnerError("trtexec not found on this device")
    shape = "x".join(str(d) for d in [batch, *manifest["input"]["shape"][1:]])
    argv = [trtexec, f"--loadEngine={release / manifest['engine']['file']}",
            f"--shapes={manifest['input']['name']}:{shape}", "--percentile=50,90,99"]
    if iterations:
        argv += ["--warmUp=0", "--duration=0", f"--iterations={iterations}"]
    else:
        argv += [f"--warmUp={TRTEXEC_WARMUP_MS}", f"--duration={max(1, int(round(seconds)))}"]
    if export_times is not None:
        argv.append(f"--exportTimes={export_times}")
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PATH=tool_path(tools)))
    if done.returncode != 0:
        raise RunnerError(f"trtexec --loadEngine failed (exit {done.returncode}): {tail(done.stdout + done.stderr)}")
    return parse_trtexec_timing(done.stdout, batch)


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
    with tempfile.TemporaryDirectory(prefix="trtexec-") as folder:
        for index in range(rounds):
            trace = Path(folder) / f"times-{index}.json"
            summary = time_trtexec(release, manifest, batch, tools, seconds, export_times=trace)
            times = exported_latencies(trace)
            if not times:
                log("trtexec wrote no --exportTimes trace: latency from its summary, without a ±")
                return summary
            round_times.append(times)
            throughputs.append(summary["throughput_per_s"])
    row = harness.latency_row(batch, round_times, None)
    row.update(throughput_per_s=sorted(throughputs)[len(throughputs) // 2], timer="trtexec",
               warmup_ms=TRTEXEC_WARMUP_MS)
    return row


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def bench(release: Path, batch_sizes: list[int] | None, runs: int | None, warmup: int | None,
          min_seconds: float | None, tools: str | None, threads: int | None, rounds: int | None = None) -> dict:
    manifest = read_manifest(release)
    settings = manifest.get("bench", {})
    batch_sizes = batch_sizes or settings.get("batch_sizes") or [1]
    runs = runs if runs is not None else settings.get("runs", 30)
    warmup = warmup if warmup is not None else settings.get("warmup", 5)
    min_seconds = min_seconds if min_seconds is not None else settings.get("min_seconds", 0.5)
    rounds = rounds if rounds is not None else settings.get("rounds", 3)
    runtime = manifest["runtime"]
    sample = load_sample(release, manifest)
    model_file = manifest["engine"]["file"] if runtime == "tensorrt" else manifest["model_file"]
    size_mb = round((release / model_file).stat().st_size / 1e6, 4)
    harness = load_harness(release)
    acc, providers = None, None
    try:
        with open_session(release, manifest, threads) as session:
            providers = session.providers
            acc = accuracy(predict(session, sample["x"]), sample["y"], sample["host_top1"])
    except RunnerError as error:
        if runtime != "tensorrt":
            raise
        log(f"accuracy on the device skipped: {error}")
        acc = {"top1": None, "top5": None, "agreement_with_host": None, "skipped": str(error)}
    tegrastats = which("tegrastats", tools)
    rows = []
    for batch in batch_sizes:
        with PowerSampler(tegrastats) as power:
            if runtime == "tensorrt":
                timing = time_trtexec_rounds(release, manifest, batch, tools, max(min_seconds, 1.0), rounds, harness)
            else:
                latency = harness.LatencySettings(warmup=warmup, warmup_seconds=settings.get("warmup_seconds", 0.2),
                                                  runs=runs, min_seconds=min_seconds)
                ((timing,),) = harness.measure_rounds([lambda: open_session(release, manifest, threads)],
                                                      tuple(manifest["input"]["shape"][1:]), [batch], latency, rounds)
                timing["timer"] = "runner"
        row = {"model": manifest["model"], "artifact": manifest["artifact"], "backend": runtime,
               "precision": manifest["precision"], "batch_size": batch, **timing, "accuracy": acc,
               "params": manifest.get("params"), "macs": manifest.get("macs"), "size_mb": size_mb,
               "providers": providers, "power": power.summary()}
        if row["power"]:
            row["energy_mj_per_sample"] = row["power"]["mean_mw"] * row["latency_ms"]["p50"] / 1000.0 / batch
        rows.append(row)
        spread = timing["latency_ms"].get("p50_spread")
        log(f"b{batch}: p50 {timing['latency_ms']['p50']:.3f} ms" + (f" ± {spread:.3f}" if spread is not None else ""))
    return {"rows": rows}


# ---------------------------------------------------------------- engine build (TensorRT)


def build_engine(release: Path, tools: str | None) -> dict:
    manifest = read_manifest(release)
    engine = manifest.get("engine")
    if not engine:
        raise RunnerError("this bundle has no build_engine.sh (runtime is not tensorrt)")
    if not which("trtexec", tools):
        raise RunnerError("trtexec not found on this device (JetPack's TensorRT is in /usr/src/tensorrt/bin); "
                          "deploy with --runtime onnxruntime instead")
    env = dict(os.environ, PATH=tool_path(tools))
    started = time.perf_counter()
    with open(release / "build.log", "w") as out:
        code = subprocess.call(["bash", str(release / engine["script"])], cwd=release, stdout=out,
                               stderr=subprocess.STDOUT, env=env)
    seconds = round(time.perf_counter() - started, 3)
    if code != 0 or not (release / engine["file"]).is_file():
        raise RunnerError(f"trtexec engine build failed (exit {code}): {tail((release / 'build.log').read_text())}")
    return {"seconds": seconds, "engine_sha256": sha256_file(release / engine["file"]),
            "engine_mb": round((release / engine["file"]).stat().st_size / 1e6, 4)}


# ---------------------------------------------------------------- releases


def releases_of(root: Path) -> list[str]:
    folder = root / RELEASES
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def current_of(root: Path) -> str | None:
    link = root / CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def switch(root: Path, version: str) -> None:
    """Point `current` at releases/<version> with one rename: readers see the old or the new, never neither."""
    if not (root / RELEASES / version / MANIFEST).is_file():
        raise RunnerError(f"release {version} not found under {root / RELEASES}")
    tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.join(RELEASES, version), tmp)
    os.replace(tmp, root / CURRENT)


def prepare(root: Path) -> dict:
    """Create the layout and drop uploads abandoned long ago (an interrupted deploy leaves one)."""
    (root / RELEASES).mkdir(parents=True, exist_ok=True)
    removed = []
    for path in (root / RELEASES).glob(INCOMING_PREFIX + "*"):
        if time.time() - path.stat().st_mtime > STALE_INCOMING_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return {"root": str(root), "removed_stale": removed}


def activate(root: Path, incoming: str, version: str) -> dict:
    source = root / RELEASES / incoming
    if not incoming.startswith(INCOMING_PREFIX) or not source.is_dir():
        raise RunnerError(f"{source}: no such upload")
    target = root / RELEASES / version
    if target.exists():
        raise RunnerError(f"release {version} already exists")
    previous = current_of(root)
    os.rename(source, target)
    switch(root, version)
    return {"current": version, "previous": previous}


def discard(root: Path, incoming: str) -> dict:
    path = root / RELEASES / incoming
    if incoming.startswith(INCOMING_PREFIX) and path.is_dir():
        shutil.rmtree(path)
    return {"discarded": incoming}


def rollback(root: Path) -> dict:
    current = current_of(root)
    older = [v for v in releases_of(root) if current is None or v < current]
    if not older:
        raise RunnerError(f"no release older than {current or 'none'} under {root / RELEASES}")
    switch(root, older[-1])
    return {"current": older[-1], "previous": current}


def status(root: Path) -> dict:
    current = current_of(root)
    rows = []
    for version in releases_of(root):
        release = root / RELEASES / version
        try:
            manifest = read_manifest(release)
        except (RunnerError, ValueError):
            manifest = {}
        rows.append({"version": version, "current": version == current, "artifact": manifest.get("artifact"),
                     "runtime": manifest.get("runtime"), "created": manifest.get("created")})
    incoming = sorted(p.name for p in (root / RELEASES).glob(INCOMING_PREFIX + "*")) if (root / RELEASES).is_dir() else []
    return {"root": str(root), "current": current, "releases": rows, "incomplete_uploads": incoming}


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runner.py", description="on-device runner of a deployed bundle")
    parser.add_argument("--tools", help="extra folders searched for trtexec, tegrastats, nvpmodel")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer")
    p.add_argument("release")
    p.add_argument("input", help=".npy of raw inputs (N,C,H,W) or one (C,H,W)")
    p.add_argument("--output")
    p.add_argument("--preprocessed", action="store_true", help="inputs are already normalised")
    p = sub.add_parser("bench")
    p.add_argument("release")
    p.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--runs", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--min-seconds", type=float)
    p.add_argument("--rounds", type=int, help="fresh loads per batch size (default: the pipeline's, 3)")
    p.add_argument("--threads", type=int)
    for name in ("smoke", "build-engine"):
        sub.add_parser(name).add_argument("release")
    p = sub.add_parser("verify")
    p.add_argument("release")
    p.add_argument("--manifest-sha256", help="the sha256 manifest.json must have")
    p = sub.add_parser("probe")
    p.add_argument("--sysroot", help="read /etc/nv_tegra_release etc. under this folder")
    for name in ("prepare", "status", "rollback"):
        sub.add_parser(name).add_argument("root")
    p = sub.add_parser("activate")
    p.add_argument("root")
    p.add_argument("incoming")
    p.add_argument("version")
    p = sub.add_parser("discard")
    p.add_argument("root")
    p.add_argument("incoming")
    return parser.parse_args(argv)


def dispatch(args: argparse.Namespace) -> dict:
    command = args.command
    if command == "probe":
        return probe(args.sysroot, args.tools)
    if command in ("prepare", "status", "rollback", "activate", "discard"):
        root = Path(args.root).expanduser()
        if command == "prepare":
            return prepare(root)
        if command == "status":
            return status(root)
        if command == "rollback":
            return rollback(root)
        if command == "activate":
            return activate(root, args.incoming, args.version)
        return discard(root, args.incoming)
    release = Path(args.release).expanduser().resolve()
    if command == "verify":
        return verify(release, args.manifest_sha256)
    if command == "smoke":
        return smoke(release, args.tools)
    if command == "build-engine":
        return build_engine(release, args.tools)
    if command == "infer":
        return infer(release, Path(args.input), Path(args.output) if args.output else None, args.preprocessed)
    return bench(release, args.batch_sizes, args.runs, args.warmup, args.min_seconds, args.tools, args.threads,
                 args.rounds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = dispatch(args)
    except (RunnerError, OSError, ValueError, KeyError) as error:
        print(json.dumps({"error": str(error) or type(error).__name__}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
