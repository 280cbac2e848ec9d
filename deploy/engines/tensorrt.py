"""TensorRT engine: ONNX -> plan file through the Python builder (TensorRT 10 and 11) or trtexec.

Every network is built strongly typed: the precision lives in the ONNX (fp32 ONNX, the FP16 copy
made at export, or the Q/DQ ONNX of the quantize stage: explicit quantization, no implicit
calibrator). That is the only mode TensorRT 11 has, and TensorRT 10 (JetPack 6 ships 10.3) builds
the same files the same way. One optimisation profile covers the dynamic batch, and for a
multi-input model (BERT) every input's batch x sequence range by name; a timing cache kept
outside the stage folder makes rebuilds fast. The plan file is plain TensorRT (no private
header): its metadata lives in engine.json.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


from compress.core.fileio import atomic_path
from deploy.engines.interface import Engine, EngineUnavailable, Session, onnx_inputs
from deploy.runner.harness import SEQUENCE_AXES
from deploy.runner.sessions import SessionError, TensorRtSession
from deploy.engines.trtexec import DEFAULT_WORKSPACE_MB, find_trtexec, run_trtexec, trtexec_args

PLAN_NAME = "model.plan"
# Which ONNX of the export/quantize stages each precision is built from.
SOURCE_KEY = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}
MISSING_SOURCE = {
    "fp16": "tensorrt fp16 builds from the FP16 ONNX made by the export stage (student.fp16.onnx), which is missing",
    "int8": "tensorrt int8 builds from the Q/DQ ONNX of the quantize stage: add stages.quantize to the pipeline",
}


def cuda_gpu() -> dict[str, str] | None:
    """Name and compute capability of CUDA device 0, or None where there is no usable GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or not count:
        return None
    error, props = cudart.cudaGetDeviceProperties(0)
    if error != cudart.cudaError_t.cudaSuccess:
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def select_source(precision: str, onnx_path: Path, sources: dict[str, Path] | None) -> Path:
    """The ONNX a precision is built from; a clear error when its stage did not run."""
    sources = dict(sources or {})
    sources.setdefault("fp32", onnx_path)
    source = sources.get(SOURCE_KEY[precision])
    if source is None:
        raise EngineUnavailable(MISSING_SOURCE[precision])
    return Path(source)


def onnx_input(onnx_path: Path) -> tuple[str, list[int]]:
    """Name and per-sample dims (batch axis dropped) of the model's first real input."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    if any(d <= 0 for d in dims[1:]):
        raise EngineUnavailable(f"{onnx_path.name}: input '{value.name}' has dynamic axes other than the batch "
                                f"({dims}); see trt_lint.json")
    return value.name, dims[1:]


def profile_shapes(sample_dims: list[int], min_batch: int, opt_batch: int, max_batch: int) -> dict[str, list[int]]:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    return {name: [batch, *sample_dims] for name, batch in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def _check_range(what: str, low: int, opt: int, high: int) -> None:
    if not 1 <= low <= opt <= high:
        raise ValueError(f"{what} profile must satisfy 1 <= min <= opt <= max, got {low}/{opt}/{high}")


def input_profile_shapes(inputs: list[dict[str, Any]], min_batch: int, opt_batch: int, max_batch: int,
                         min_sequence: int = 1, opt_sequence: int = 128, max_sequence: int = 512,
                         onnx_name: str = "model.onnx") -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape per input name: axis 0 over the batch range, a sequence axis over the sequence range.

    `inputs` are input specs (deploy.engines.interface.onnx_inputs). Any other dynamic axis has no
    range to build for and is refused, as TensorRT's lint reports it.
    """
    _check_range("batch", min_batch, opt_batch, max_batch)
    _check_range("sequence", min_sequence, opt_sequence, max_sequence)
    ranges = {"batch": (min_batch, opt_batch, max_batch), "sequence": (min_sequence, opt_sequence, max_sequence)}
    profile = {}
    for spec in inputs:
        shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for axis, dim in enumerate(spec["shape"]):
            if isinstance(dim, int) and dim > 0:
                sizes = (dim, dim, dim)
            elif axis == 0:
                sizes = ranges["batch"]
            elif dim in SEQUENCE_AXES:
                sizes = ranges["sequence"]
            else:
                raise EngineUnavailable(f"{onnx_name}: input '{spec['name']}' axis {axis} is dynamic ('{dim}'), "
                                        "neither the batch nor a sequence axis; see trt_lint.json")
            for kind, size in zip(("min", "opt", "max"), sizes):
                shapes[kind].append(int(size))
        profile[spec["name"]] = shapes
    return profile


def build_plan(trt, onnx_path: Path, plan_path: Path, input_name: str | None, shapes: dict[str, list[int]] | None,
               workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: Path | None = None,
               input_shapes: dict[str, dict[str, list[int]]] | None = None) -> dict[str, Any]:
    """Parse, configure and build with the TensorRT Python API (`trt` is the imported module).

    The profile is `shapes` of `input_name`, or with `input_shapes` one shape range per input name
    (a multi-input model: TensorRT needs every dynamic input in the profile).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # Required on 10.x for Q/DQ and FP16 ONNX to keep their types; accepted and ignored on 11.x.
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors or 'unknown parser error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    for name, ranges in (input_shapes or {input_name: shapes}).items():
        profile.set_shape(name, ranges["min"], ranges["opt"], ranges["max"])
    config.add_optimization_profile(profile)

    cache_loaded = False
    if timing_cache is not None:
        previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
        if previous:
            cache_loaded = bool(config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False))
        if not cache_loaded:  # no cache yet, or one from another GPU/TensorRT: start a fresh one
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path.name} (see the TensorRT log above)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"builder": "python", "strongly_typed": strongly_typed is not None, "timing_cache_reused": cache_loaded}


def trtexec_version(log_text: str) -> str | None:
    """trtexec logs '[TensorRT v100300]' first: 10.3.0."""
    found = re.search(r"TensorRT v(\d+)", log_text)
    if not found:
        return None
    number = int(found.group(1))
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


class TensorRTEngine(Engine):
    backend = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    # Without a CUDA GPU here, the build is deferred to the device (deploy) instead of failing.
    deferrable = True

    module = "tensorrt"

    @classmethod
    def missing(cls) -> str | None:
        """Why TensorRT cannot build here, or None when it can."""
        if cuda_gpu() is None:
            return "no CUDA GPU on this machine"
        if cls.version() is None and find_trtexec() is None:
            return "neither the tensorrt Python package nor trtexec is installed"
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.missing() is None

    def source(self, onnx_path: Path, precision: str, sources: dict[str, Path]) -> Path:
        return select_source(precision, onnx_path, sources)

    def _build(self, onnx_path: Path, out_dir: Path, precision: str, sources: dict[str, Path] | None = None,
               calibration: Any = None, min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32,
               workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: Path | None = None,
               min_sequence: int = 1, opt_sequence: int = 128, max_sequence: int = 512,
               **_: Any) -> tuple[Path, dict[str, Any]]:
        source = onnx_path  # Engine.build resolved it through self.source()
        input_shapes = input_profile_shapes(onnx_inputs(source), min_batch, opt_batch, max_batch, min_sequence,
                                            opt_sequence, max_sequence, source.name)
        input_name = next(iter(input_shapes))
        shapes = input_shapes[input_name]
        plan = out_dir / PLAN_NAME
        if timing_cache is not None:
            Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        version = self.version()
        if version is not None:
            import tensorrt as trt

            info = build_plan(trt, source, plan, input_name, shapes, workspace_mb, timing_cache, input_shapes)
        else:
            executable = find_trtexec()
            args = trtexec_args(source, plan, precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                                input_shapes=input_shapes)
            log = out_dir / "trtexec.log"
            run_trtexec(args, executable, log)
            version = trtexec_version(log.read_text())
            info = {"builder": "trtexec", "strongly_typed": True, "trtexec_args": args[1:]}
        gpu = cuda_gpu() or {}
        return plan, {
            "version": version,
            "tensorrt_version": version,
            "tensorrt_major": int(version.split(".")[0]) if version else None,
            "gpu": gpu.get("name"),
            "compute_capability": gpu.get("compute_capability"),
            "input_name": input_name,
            "shapes": shapes,  # the first input's, as before multi-input models
            "input_shapes": input_shapes,
            "workspace_mb": int(workspace_mb),
            "timing_cache": str(timing_cache) if timing_cache else None,
            "calibration": "explicit Q/DQ in the ONNX" if precision == "int8" else None,
            **info,
        }

    def load(self, artifact: Path, threads: int | None = None) -> Session:
        try:
            return TensorRtSession(artifact, threads)
        except SessionError as error:
            raise EngineUnavailable(str(error)) from None
