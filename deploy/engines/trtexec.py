"""trtexec command lines for building a TensorRT engine from ONNX (TensorRT 10 flags).

Used where the engine is built: on the device, since an engine is tied to its GPU and TensorRT
version. Shapes are NCHW tuples; the batch dimension is dynamic between min and max.
"""

from __future__ import annotations

import shlex

PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


def _shape(name: str, shape) -> str:
    return f"{name}:{'x'.join(str(int(d)) for d in shape)}"


def trtexec_args(onnx_path, engine_path, precision, min_shape, opt_shape, max_shape, input_name="input",
                 workspace_mb=1024, timing_cache=None) -> list[str]:
    """Arguments after `trtexec` that build `engine_path` from `onnx_path`."""
    if precision not in PRECISION_FLAGS:
        raise ValueError(f"trtexec builds {', '.join(PRECISION_FLAGS)}, not {precision}")
    args = [f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
            f"--minShapes={_shape(input_name, min_shape)}", f"--optShapes={_shape(input_name, opt_shape)}",
            f"--maxShapes={_shape(input_name, max_shape)}", f"--memPoolSize=workspace:{int(workspace_mb)}M",
            *PRECISION_FLAGS[precision]]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return args


def build_script(onnx_name, engine_name, precision, min_shape, opt_shape, max_shape, input_name="input") -> str:
    """A POSIX sh script, run in the bundle folder on the device, that builds the engine with trtexec."""
    args = trtexec_args(onnx_name, engine_name, precision, min_shape, opt_shape, max_shape, input_name)
    return ("#!/bin/sh\n# Builds the TensorRT engine on this device (engines are tied to the GPU and TensorRT version).\n"
            "set -eu\ncd \"$(dirname \"$0\")\"\n"
            "TRTEXEC=\"${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}\"\n"
            f"exec \"$TRTEXEC\" {shlex.join(args)}\n")
