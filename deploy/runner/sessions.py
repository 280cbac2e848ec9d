"""One session per backend, the same on the host and on the device: ONNX Runtime, OpenVINO, TensorRT.

A session is a loaded model whose `infer(batch) -> logits` is what the harness times and the
accuracy check runs: a batch is one array (a single-input model, a float32 NCHW image batch) or a
dict input name -> array (a multi-input model: BERT's int64 input_ids, attention_mask,
token_type_ids), fed by name in each input's own dtype. The host's engines (deploy/engines) open
their artifacts with these classes, and every bundle carries this file beside runner.py, so a
device runs the model exactly as the host measured it. Python 3.8, numpy and the backend's own
package only: no torch, nothing of the toolchain. Backends are imported when a session is opened,
never at import time.
"""

from __future__ import annotations

from pathlib import Path

# The OpenVINO CPU plugin computes an fp32 model in bf16 where the CPU has it (AVX512-BF16, AMX):
# an "fp32" artifact must ask for f32. fp16 asks for f16, which the plugin serves as bf16 on CPUs
# without fp16 arithmetic. int8 keeps its non-quantized ops in f32, as ONNX Runtime does. bf16 is
# for `compress benchmark --precision bf16`.
OPENVINO_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
# OpenVINO's element types in the toolchain's words, for the label of what ran.
OPENVINO_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
# ONNX Runtime's input type strings as numpy dtype names: int64 token ids stay int64.
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


_OPENVINO_CORE = []


def openvino_core():
    """The process's one OpenVINO Core. Each Core's CPU plugin installs a signal stack on the thread that
    made it and, when the Core is freed, puts back the stack it found: freed in another order than made,
    two Cores leave the thread on an unmapped stack, and the next signal the process takes (a child's
    SIGCHLD, with DataLoader workers' handler installed) kills it with SIGSEGV. One Core, kept for the
    life of the process, never does that."""
    if not _OPENVINO_CORE:
        import openvino as ov

        _OPENVINO_CORE.append(ov.Core())
    return _OPENVINO_CORE[0]


class SessionError(RuntimeError):
    """A model that cannot be loaded or run here (wrong TensorRT version or GPU, a CUDA error)."""


class FeedError(SessionError, ValueError):
    """Inputs that do not match the model's: a missing or unknown name, one array for several inputs."""


class Session:
    """A loaded model; a context manager, so the harness can load one afresh per round."""

    providers: list = []
    # The precision the backend computes in, where it can tell (OpenVINO); None: as the artifact is stored.
    precision = None
    # The model's inputs in graph order, and each one's numpy dtype name (float32 where not told).
    input_names: list = []
    input_dtypes: dict = {}

    def infer(self, x):
        raise NotImplementedError

    def feeds(self, x) -> dict:
        """name -> contiguous array in the input's dtype, checked once here so every backend says the same.

        One array feeds a single-input model (the image case); a multi-input model needs a dict.
        """
        import numpy as np

        names = list(self.input_names) or ["input"]
        if not isinstance(x, dict):
            if len(names) > 1:
                raise FeedError(f"the model takes {len(names)} inputs ({', '.join(names)}): "
                                "pass a dict input name -> array")
            x = {names[0]: x}
        missing = [name for name in names if name not in x]
        if missing:
            raise FeedError(f"missing input {', '.join(repr(n) for n in missing)} "
                            f"(the model takes {', '.join(names)})")
        unknown = [name for name in x if name not in names]
        if unknown:
            raise FeedError(f"unknown input {', '.join(repr(n) for n in unknown)} "
                            f"(the model takes {', '.join(names)})")
        return {name: np.ascontiguousarray(x[name], dtype=self.input_dtypes.get(name, "float32")) for name in names}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OnnxRuntimeSession(Session):
    """ONNX Runtime on the given execution providers (default: CUDA where it is installed, then CPU)."""

    def __init__(self, path, threads=None, precision=None, providers=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        wanted = providers or ("CUDAExecutionProvider", "CPUExecutionProvider")
        self.providers = [p for p in wanted if p in available]
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_dtypes = {i.name: ORT_DTYPES.get(i.type, "float32") for i in inputs}
        self.input_name = self.input_names[0]

    def infer(self, x):
        return self.session.run(None, self.feeds(x))[0]


def openvino_hint(precision, float_precision=None):
    """The CPU plugin's INFERENCE_PRECISION_HINT for an artifact of `precision` (an int8 one computes its float
    ops at `float_precision` when the build asked for it); None leaves the plugin's default."""
    if precision == "int8" and float_precision in OPENVINO_PRECISION:
        return OPENVINO_PRECISION[float_precision]
    return OPENVINO_PRECISION.get(precision)


class OpenVinoSession(Session):
    """OpenVINO's CPU plugin at the artifact's precision (OPENVINO_PRECISION), not the plugin's default.

    An int8 model's ops left in float (by accuracy control, or that int8 does not cover) run in f32,
    or in `float_precision` (bf16, fp16) when the build asked for mixed precision.
    """

    def __init__(self, path, threads=None, precision=None, providers=None, float_precision=None):
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        hint = openvino_hint(precision, float_precision)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        self.compiled = openvino_core().compile_model(str(path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin chose, asked or not
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        # An int8 model stays int8 in its quantized ops whatever the rest runs in.
        self.precision = "int8" if precision == "int8" else \
            OPENVINO_NAMES.get(self.inference_precision, self.inference_precision)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        ports = list(self.compiled.inputs)
        # A port without a name (a model built in code) is still fed by its index.
        self.input_names = [p.get_any_name() if p.get_names() else str(i) for i, p in enumerate(ports)]
        self.input_dtypes = {name: _openvino_dtype(port) for name, port in zip(self.input_names, ports)}
        self.providers = ["CPU"]

    def infer(self, x):
        import numpy as np

        feeds = self.feeds(x)
        result = self.request.infer({i: feeds[name] for i, name in enumerate(self.input_names)})
        return np.array(result[self.output])


def _openvino_dtype(port) -> str:
    """numpy dtype name of an OpenVINO input port; float32 where its element type is dynamic."""
    try:
        return str(port.get_element_type().to_dtype())
    except (RuntimeError, TypeError, ValueError):
        return "float32"


def cuda_runtime():
    """The CUDA runtime bindings of cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


class TensorRtSession(Session):
    """A TensorRT plan run with the name-based tensor API (execute_async_v3) on cuda-python buffers.

    Plain TensorRT and cuda-python, so the same class runs on a GPU server and on a Jetson, where
    torch is rarely installed. Output shapes come from the execution context after every input's
    shape is set by name, so the dynamic batch (and sequence) of the optimisation profile works at
    any size inside it.
    """

    def __init__(self, path, threads=None, precision=None, providers=None):
        import tensorrt as trt

        self.cudart = cuda_runtime()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise SessionError(f"{path}: TensorRT could not load this plan (built by another TensorRT version "
                               "or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name, self.output_name = inputs[0], next(n for n in names if n not in inputs)
        self.input_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        self.input_names = inputs
        # The engine's own types: an int64 ONNX input may have become int32 in the engine.
        self.input_dtypes = {n: _numpy_name(trt.nptype(self.engine.get_tensor_dtype(n))) for n in inputs}
        self.output_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        self.stream = self._check(self.cudart.cudaStreamCreate())
        self.providers = ["TensorRT"]

    def _check(self, result):
        error, *value = result
        if int(error) != 0:
            raise SessionError(f"CUDA error {error}")
        return value[0] if value else None

    def infer(self, x):
        import numpy as np

        cudart = self.cudart
        feeds = self.feeds(x)
        for name, array in feeds.items():
            if self.context.set_input_shape(name, array.shape) is False:
                raise FeedError(f"input '{name}' of shape {list(array.shape)} is outside the engine's "
                                "optimisation profile")
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype)
        buffers = []
        try:
            h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            for name, array in feeds.items():
                buffers.append(self._check(cudart.cudaMalloc(max(array.nbytes, 1))))
                self._check(cudart.cudaMemcpyAsync(buffers[-1], array.ctypes.data, array.nbytes, h2d, self.stream))
                self.context.set_tensor_address(name, int(buffers[-1]))
            buffers.append(self._check(cudart.cudaMalloc(max(out.nbytes, 1))))
            self.context.set_tensor_address(self.output_name, int(buffers[-1]))
            if not self.context.execute_async_v3(int(self.stream)):
                raise SessionError("TensorRT execution failed")
            self._check(cudart.cudaMemcpyAsync(out.ctypes.data, buffers[-1], out.nbytes, d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            for buffer in buffers:
                cudart.cudaFree(buffer)
        return out.astype(np.float32)

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = self.runtime = None


def _numpy_name(dtype) -> str:
    import numpy as np

    return np.dtype(dtype).name


SESSIONS = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVinoSession, "tensorrt": TensorRtSession}


def open_model(path, runtime, threads=None, precision=None, providers=None, float_precision=None):
    """A session for the model file at `path` on `runtime` (onnxruntime, openvino or tensorrt)."""
    try:
        session_class = SESSIONS[runtime]
    except KeyError:
        raise SessionError(f"unknown runtime '{runtime}'; known: {', '.join(SESSIONS)}") from None
    if float_precision is not None and session_class is OpenVinoSession:
        return session_class(path, threads, precision, providers, float_precision)
    return session_class(path, threads, precision, providers)
