"""Memory an artifact needs on its own: a fresh process that loads only it and its runtime.

The benchmark times every artifact in one process that also holds torch, the dataset and the other
artifacts, so its peak resident memory says little about what a device must have free for one
ONNX model. Here a child process (`python -m compress.measuring.footprint`) imports the artifact's runtime
and nothing else, notes its resident memory, loads the artifact, runs it on fresh random inputs at
the largest batch size, and reports:

- `runtime_mb`: resident memory with the runtime imported, before the artifact is loaded;
- `model_mb`: what loading and running the artifact added on top (weights, arenas, activations);
- `peak_mb`: the process's peak resident memory, what the whole deployment needs.

Host memory only: a TensorRT engine's GPU memory is not resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The module each backend imports when it loads an artifact: imported before the artifact so its
# cost is counted as the runtime's, not the model's.
RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
RUNS = 3


def measure_in_this_process(path: Path, backend: str, input_shape, batch_size: int, threads: int | None,
                            precision: str | None = None, sequence_length: int | None = None) -> dict:
    """`input_shape`: a per-sample shape, or input specs (a text model's token ids, at `sequence_length`)."""
    import importlib

    from compress.measuring.artifacts import open_session
    from deploy.runner.harness import input_pool, proc_status_kb, reset_peak_rss

    importlib.import_module(RUNTIME_MODULES.get(backend, backend))
    runtime_kb, import_peak_kb = proc_status_kb("VmRSS"), proc_status_kb("VmHWM")
    if runtime_kb is None or import_peak_kb is None:
        raise SystemExit("resident memory is read from /proc/self/status, which this system lacks")
    reset_peak_rss()  # from here VmHWM is the peak of loading and running (where the kernel allows a reset)
    with open_session(path, backend, threads, precision) as session:
        for batch in input_pool(input_shape, batch_size, seed=batch_size, count=RUNS, sequence_length=sequence_length):
            session.infer(batch)
        run_peak_kb = proc_status_kb("VmHWM") or 0
    return {"peak_mb": round(max(import_peak_kb, run_peak_kb) / 1024, 1), "runtime_mb": round(runtime_kb / 1024, 1),
            "model_mb": round(max(run_peak_kb - runtime_kb, 0) / 1024, 1), "batch_size": batch_size,
            "torch_imported": "torch" in sys.modules}


def measure_footprint(path: str | os.PathLike, backend: str, input_shape, batch_size: int,
                      threads: int | None = None, timeout: float = 600, precision: str | None = None,
                      sequence_length: int | None = None) -> dict:
    """`measure_in_this_process` in a fresh Python; {"error": ...} when the child fails."""
    # Run from the folder that holds this package, so `-m` finds this very package and not a `compress`
    # folder that happens to lie in the caller's working directory.
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "compress.measuring.footprint", backend, str(Path(path).resolve()),
               "--batch", str(batch_size)]
    if input_shape and isinstance(input_shape[0], dict):  # input specs
        command += ["--inputs", json.dumps(list(input_shape)), "--sequence-length", str(sequence_length)]
    else:
        command += ["--shape", ",".join(str(d) for d in input_shape)]
    if threads:
        command += ["--threads", str(threads)]
    if precision:
        command += ["--precision", precision]
    # A torch checkpoint of a `module:factory` model needs the module: the child appends this
    # process's import path to its own (appended: the child's own packages come first).
    command += ["--import-path", os.pathsep.join(p for p in sys.path if p)]
    try:
        done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(footprint: dict) -> str:
    """One line for logs and reports: '65 MB peak resident, alone in a fresh process (runtime 52 MB + 13 MB ...)'."""
    if "error" in footprint:
        return f"not measured: {footprint['error']}"
    return (f"{footprint['peak_mb']:.0f} MB peak resident, alone in a fresh process "
            f"(runtime {footprint['runtime_mb']:.0f} MB + {footprint['model_mb']:.0f} MB to load and run "
            f"at batch {footprint['batch_size']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.measuring.footprint", description=__doc__.splitlines()[0])
    parser.add_argument("backend")
    parser.add_argument("path", type=Path)
    shapes = parser.add_mutually_exclusive_group(required=True)
    shapes.add_argument("--shape", help="per-sample input shape, e.g. 1,8,8")
    shapes.add_argument("--inputs", help="input specs as JSON (name, dtype, shape with named dynamic axes)")
    parser.add_argument("--sequence-length", type=int, help="with --inputs: the length of the sequence axes")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--precision", help="openvino: the precision to compute in")
    parser.add_argument("--import-path", default="", help="folders to append to sys.path, os.pathsep-separated")
    args = parser.parse_args(argv)
    sys.path.extend(p for p in args.import_path.split(os.pathsep) if p and p not in sys.path)
    inputs = json.loads(args.inputs) if args.inputs else tuple(int(d) for d in args.shape.split(","))
    print(json.dumps(measure_in_this_process(args.path, args.backend, inputs, args.batch, args.threads, args.precision,
                                             args.sequence_length)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
