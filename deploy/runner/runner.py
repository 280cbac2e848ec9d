#!/usr/bin/env python3
"""On-device runner shipped in every bundle: Python 3.8+, numpy and whichever runtime the device has.

No torch, no import of the toolchain: this file is copied to the device and also piped to
`python3 -` over SSH for the probe and the steps that run a release's model, so it alone holds
the protocol and the probe. The steps on the device folder (checksums, the deploy lock, switching
`current`, history, pruning) are releases.py's, piped alone in the same way. What runs a release's
model travels in the bundle beside it and is loaded from the release folder (`release_module`):
sessions.py (the one session per backend that the host uses too), harness.py (the host's latency
harness), preprocess.py (and preprocess_text.py for a text model), inference.py and device_bench.py; a causal
LM's release (its manifest carries generation settings) is checked, timed and run by lm_device.py with
generation.py instead, and a detector's (its manifest carries detection settings) by detection_device.py with
detection.py.
Every command prints one JSON document on the last line of stdout (`{"error": ...}` and exit 1 on
failure), but `infer`, which prints one JSON line per input (`{"file", "label", "score"}`, with
`index` for a row of an array file and `text` for a line of a text file), so that a script reads
its answers one input at a time, and `generate`, which prints the generated text (`--json`: one JSON
document); progress goes to stderr.

  python3 runner.py infer  RELEASE_DIR INPUT.npy [--output OUT.npy] [--preprocessed]
  python3 runner.py infer  RELEASE_DIR IMAGE [IMAGE ...] [--output OUT.npy]   (Pillow; the bundle's image steps)
  python3 runner.py infer  RELEASE_DIR TEXTS.txt [...] | TOKENS.npz [--output OUT.npy]   (a text model: one text
                           a line, tokenised with the bundle's tokenizer.json by `tokenizers`)
  python3 runner.py infer  RELEASE_DIR IMAGE [IMAGE ...] [--out DIR] [--threshold T]   (a detector: one JSON line
                           per image, {"file", "detections": [{"box", "score", "label", "name"}]}; --out DIR writes
                           each image with its boxes drawn)
  python3 runner.py bench  RELEASE_DIR [--batch-sizes 1,8] [--runs 30]
  python3 runner.py generate RELEASE_DIR "PROMPT" [--max-new-tokens N] [--json]   (a causal LM: greedy text)
  python3 runner.py verify RELEASE_DIR          (sha256 of every file against manifest.json: releases.py's)
  python3 runner.py probe  [--sysroot DIR]      (host, arch, runtimes, Jetson L4T/TensorRT/power mode)
  python3 releases.py status ROOT | rollback ROOT   (and the deploy's own steps: see releases.py)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

TRT_DEFAULT_DIRS = ("/usr/src/tensorrt/bin",)
# JetPack release of each L4T release (NVIDIA's Jetson archive); the longest matching prefix wins.
JETPACK_OF_L4T = {"36.4.4": "6.2.1", "36.4.3": "6.2", "36.4": "6.1", "36.3": "6.0", "36.2": "6.0 DP",
                  "35.6": "5.1.4", "35.5": "5.1.3", "35.4": "5.1.2", "35.3": "5.1.1", "35.2": "5.1",
                  "35.1": "5.0.2", "32.7": "4.6.x", "32.6": "4.6", "32.5": "4.5.x"}


class RunnerError(Exception):
    pass


def device_package(module: str, package: str, purpose: str):
    """`module` imported, or one line naming the package this device lacks and what it is needed for."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RunnerError(f"{package} is not installed on this device (pip install {package}): it {purpose}") from None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tool_path(extra: str | None) -> str:
    """PATH for device tools: extra dirs first, then the usual TensorRT location, then PATH."""
    parts = [p for p in (extra or "").split(os.pathsep) if p] + list(TRT_DEFAULT_DIRS)
    return os.pathsep.join(parts + [os.environ.get("PATH", "/usr/bin:/bin")])


def which(name: str, tools: str | None) -> str | None:
    return shutil.which(name, path=tool_path(tools))


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def raw_or_array(inputs: list, is_raw, array_suffix: str, takes: str, raw_kind: str, array_kind: str,
                 preprocessed: bool) -> bool:
    """True for raw inputs (image or text files), False for one array file of model inputs; anything else, a mix,
    or --preprocessed with raw inputs is refused naming the file. `takes` says what the model takes."""
    for path in inputs:
        if not (is_raw(path) or str(path).lower().endswith(array_suffix)):
            raise RunnerError(f"{path}: not an input {takes}")
    arrays = [path for path in inputs if not is_raw(path)]
    if arrays and len(inputs) > 1:
        raise RunnerError(f"{arrays[0]}: give one {array_suffix} alone, or {raw_kind} only")
    if arrays:
        return False
    if preprocessed:
        raise RunnerError(f"{inputs[0]}: --preprocessed applies to {array_kind}, not to {raw_kind}")
    return True


def release_module(release: Path, name: str):
    """A module the bundle carries beside runner.py (inference, device_bench, ...), from the release folder.

    This process's runner is registered as `runner` first, so the bundled modules share its
    helpers and its RunnerError whether it was piped to `python3 -` or started as a file. No
    __pycache__ is written: a release holds exactly its manifest's files, so `verify` keeps passing.
    """
    if not (release / f"{name}.py").is_file():
        raise RunnerError(f"{release / (name + '.py')}: not found (this release predates it; deploy it again)")
    sys.dont_write_bytecode = True
    sys.modules.setdefault("runner", sys.modules[__name__])
    if str(release) not in sys.path:
        sys.path.insert(0, str(release))
    return importlib.import_module(name)


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


def distribution_version(name: str) -> str | None:
    """An installed package's version from its metadata, without importing it."""
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:  # not installed (PackageNotFoundError), or metadata unreadable
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
        "tokenizers": module_version("tokenizers"),
        "onnxruntime_genai": module_version("onnxruntime_genai"),
        "tensorrt_llm": distribution_version("tensorrt_llm"),  # not imported: it starts CUDA and torch
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


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runner.py", description="on-device runner of a deployed bundle")
    parser.add_argument("--tools", help="extra folders searched for trtexec, tegrastats, nvpmodel")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer")
    p.add_argument("release")
    p.add_argument("input", nargs="+", help="one .npy of raw inputs (N,C,H,W) or one (C,H,W), or image files "
                   "(.png .jpg .jpeg .bmp .gif .tif .tiff .webp) of a bundle made from images; for a text model, "
                   ".txt files (one text per line) or one .npz of token ids")
    p.add_argument("--output")
    p.add_argument("--preprocessed", action="store_true", help="inputs are already normalised")
    p.add_argument("--out", metavar="DIR", help="a detector's release: write each image with its boxes drawn here")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="a detector's release: keep boxes scoring at least T (default: the bundle's score_threshold)")
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
    p = sub.add_parser("generate", help="a causal LM's release: the greedy continuation of PROMPT, as text")
    p.add_argument("release")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, help="default: the bundle's max_new_tokens")
    p.add_argument("--backend", choices=("auto", "genai", "onnxruntime", "openvino-genai", "openvino", "tensorrt-llm"),
                   default="auto", help="an onnxruntime-genai folder: genai (onnxruntime-genai) or onnxruntime (the "
                   "plain loop over the KV cache); an OpenVINO folder: openvino-genai (LLMPipeline) or openvino (the "
                   "loop over the stateful model); a TensorRT-LLM release: tensorrt-llm; auto: the runtime's own generator "
                   "where installed")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON document (prompt, tokens, text)")
    p = sub.add_parser("verify")
    p.add_argument("release")
    p.add_argument("--manifest-sha256", help="the sha256 manifest.json must have")
    p = sub.add_parser("probe")
    p.add_argument("--sysroot", help="read /etc/nv_tegra_release etc. under this folder")
    return parser.parse_args(argv)


def generates_text(release: Path) -> bool:
    """Whether a release is a causal LM's: its manifest.json carries generation settings."""
    try:
        return isinstance(json.loads((release / "manifest.json").read_text()).get("generation"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def detects_objects(release: Path) -> bool:
    """Whether a release is a detector's: its manifest.json carries detection settings."""
    try:
        return isinstance(json.loads((release / "manifest.json").read_text()).get("detection"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def detector_command(release: Path, args: argparse.Namespace) -> dict | list:
    """smoke, bench and infer of a detector's release (detection_device.py, from the release folder)."""
    if args.command == "build-engine":
        raise RunnerError(f"{release}: a detector's release ships its engine built; there is none to build here")
    if args.command == "infer" and (args.output or args.preprocessed):
        flag = "--output" if args.output else "--preprocessed"
        raise RunnerError(f"{flag} applies to a classifier's release; a detector takes image files (--out DIR "
                          "writes them with their boxes drawn)")
    detection_device = release_module(release, "detection_device")
    if args.command == "smoke":
        return detection_device.smoke(release)
    if args.command == "infer":
        return detection_device.infer(release, [Path(p) for p in args.input], args.out, args.threshold)
    return detection_device.bench(release, args.threads, args.rounds)


def dispatch(args: argparse.Namespace) -> dict | list:
    command = args.command
    if command == "probe":
        return probe(args.sysroot, args.tools)
    release = Path(args.release).expanduser().resolve()
    if command == "verify":
        return release_module(release, "releases").verify(release, args.manifest_sha256)
    if command == "generate":
        if detects_objects(release):
            raise RunnerError(f"{release}: this release detects objects: python3 runner.py infer RELEASE IMAGE [...]")
        return release_module(release, "lm_device").generate(release, args.prompt, args.max_new_tokens,
                                                              args.threads, args.backend)
    if generates_text(release):
        if command == "infer":
            raise RunnerError(f"{release}: this release generates text: python3 runner.py generate RELEASE \"PROMPT\"")
        lm_device = release_module(release, "lm_device")
        if command == "build-engine":
            return lm_device.build_engine(release)
        if command == "smoke":
            return lm_device.smoke(release)
        return lm_device.bench(release, args.threads, args.rounds)
    if detects_objects(release):
        return detector_command(release, args)
    if command == "infer" and (args.out is not None or args.threshold is not None):
        raise RunnerError(f"{'--out' if args.out is not None else '--threshold'} applies to a detector's release; "
                          "a classifier writes its scores with --output OUT.npy")
    if command == "infer":
        return release_module(release, "inference").infer(release, [Path(p) for p in args.input],
                                                          Path(args.output) if args.output else None, args.preprocessed)
    device_bench = release_module(release, "device_bench")
    if command == "smoke":
        return device_bench.smoke(release, args.tools)
    if command == "build-engine":
        return device_bench.build_engine(release, args.tools)
    return device_bench.bench(release, args.batch_sizes, args.runs, args.warmup, args.min_seconds, args.tools,
                             args.threads, args.rounds)


def print_text(text: str) -> None:
    """Generated text on stdout, as UTF-8 even where the locale's encoding cannot hold it."""
    try:
        print(text, flush=True)
    except UnicodeEncodeError:
        sys.stdout.buffer.write((text + "\n").encode("utf-8"))
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = dispatch(args)
    except (RunnerError, OSError, ValueError, KeyError) as error:
        print(json.dumps({"error": str(error) or type(error).__name__}))
        return 1
    if args.command == "generate" and not args.json:
        print_text(result["text"])
        return 0
    for record in result if isinstance(result, list) else [result]:  # infer: a JSON line per input
        print(json.dumps(record, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
