"""trtexec: the same TensorRT build as the Python builder, for devices that have only the CLI.

A Jetson ships `trtexec` with JetPack even where the `tensorrt` Python package is missing. The
flags mirror `deploy.engines.tensorrt.build_plan`: a strongly typed network (the precision lives
in the ONNX: FP16 ONNX for fp16, Q/DQ ONNX for int8; TensorRT 11 accepts nothing else and
TensorRT 10 builds it the same), one optimisation profile over the batch (and the sequence, for
every input of a multi-input model: `--minShapes=input_ids:1x1,attention_mask:1x1,...`), a
workspace limit and a timing cache shared by builds.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024
Shape = Sequence[int]
# Per input name, its profile: {"min": shape, "opt": shape, "max": shape}.
InputShapes = Dict[str, Dict[str, Shape]]


def shape_arg(input_name: str, shape: Shape) -> str:
    return f"{input_name}:{'x'.join(str(int(d)) for d in shape)}"


def check_profile(min_shape: Shape, opt_shape: Shape, max_shape: Shape, input_name: Optional[str] = None) -> None:
    """Same rank and min <= opt <= max on every axis, or a ValueError (naming the input when given)."""
    where = f" of input '{input_name}'" if input_name else ""
    if not all(len(s) == len(min_shape) for s in (opt_shape, max_shape)):
        raise ValueError(f"min, opt and max shapes{where} must have the same rank")
    if any(lo > hi for lo, hi in zip(min_shape, opt_shape)) or any(lo > hi for lo, hi in zip(opt_shape, max_shape)):
        raise ValueError(f"shapes{where} must satisfy min <= opt <= max, got {list(min_shape)}, {list(opt_shape)}, "
                         f"{list(max_shape)}")


def profile_args(input_shapes: InputShapes) -> list[str]:
    """--minShapes/--optShapes/--maxShapes covering every input, e.g. --minShapes=input_ids:1x1,attention_mask:1x1."""
    if not input_shapes:
        raise ValueError("an optimisation profile needs the shapes of at least one input")
    for name, shapes in input_shapes.items():
        check_profile(shapes["min"], shapes["opt"], shapes["max"], name)
    return [f"--{kind}Shapes=" + ",".join(shape_arg(name, shapes[kind]) for name, shapes in input_shapes.items())
            for kind in ("min", "opt", "max")]


def trtexec_args(onnx_path, engine_path, precision: str, min_shape: Optional[Shape] = None,
                 opt_shape: Optional[Shape] = None, max_shape: Optional[Shape] = None,
                 input_name: str = "input", workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache=None, input_shapes: Optional[InputShapes] = None) -> list[str]:
    """The trtexec argument list (argv, no shell) that builds `engine_path` from `onnx_path`.

    One input's profile by `min_shape`/`opt_shape`/`max_shape` and `input_name`, or every input's
    by `input_shapes` (a multi-input model: each of its inputs needs a shape in the profile).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if input_shapes is None:
        if min_shape is None or opt_shape is None or max_shape is None:
            raise ValueError("give min, opt and max shapes, or input_shapes")
        check_profile(min_shape, opt_shape, max_shape)
        input_shapes = {input_name: {"min": min_shape, "opt": opt_shape, "max": max_shape}}
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped",
            *profile_args(input_shapes), f"--memPoolSize=workspace:{int(workspace_mb)}M", "--skipInference"]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return args


def build_script(onnx_name: str, engine_name: str, precision: str, min_shape: Optional[Shape] = None,
                 opt_shape: Optional[Shape] = None, max_shape: Optional[Shape] = None, input_name: str = "input",
                 input_shapes: Optional[InputShapes] = None) -> str:
    """Text of a build_engine.sh that builds the engine on the device, next to the script itself."""
    args = trtexec_args(onnx_name, engine_name, precision, min_shape, opt_shape, max_shape, input_name,
                        timing_cache="timing.cache", input_shapes=input_shapes)
    command = ' \\\n    '.join(['"$TRTEXEC"', *(shlex.quote(a) for a in args[1:])])
    return f"""#!/usr/bin/env bash
# Build the TensorRT {precision} engine of {onnx_name} on this device (engines are specific to the
# GPU and TensorRT version that built them, so they are built where they run).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "trtexec not found: install TensorRT (JetPack ships it in /usr/src/tensorrt/bin) or set TRTEXEC" >&2
  exit 127
fi
{command}
echo "built $(pwd)/{engine_name}"
"""


def find_trtexec() -> str | None:
    """trtexec on PATH, or where JetPack installs it."""
    found = shutil.which("trtexec")
    if found:
        return found
    jetpack = Path("/usr/src/tensorrt/bin/trtexec")
    return str(jetpack) if jetpack.is_file() else None


def run_trtexec(args: list[str], executable: str, log_path: Path) -> None:
    """Run trtexec (argv list, never a shell string); its output goes to log_path."""
    with open(log_path, "w") as log:
        result = subprocess.run([executable, *args[1:]], stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"trtexec exited {result.returncode}: {' | '.join(tail)} (log: {log_path})")
