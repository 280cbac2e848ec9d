"""One session per backend, the same on the host and on the device: ONNX Runtime, OpenVINO, TensorRT.

A session is a loaded model whose `infer(float32 batch) -> logits` is what the harness times and
the accuracy check runs. The host's engines (deploy/engines) open their artifacts with these
classes, and every bundle carries this file beside runner.py, so a device runs the model exactly
as the host measured it. Python 3.8, numpy and the backend's own package only: no torch, nothing
of the toolchain. Backends are imported when a session is opened, never at import time.
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


class Session:
    """A loaded model; a context manager, so the harness can load one afresh per round."""

    providers: list = []
    # The precision the backend computes in, where it can tell (OpenVINO); None: as the artifact is stored.
    precision = None

    def infer(self, x):
        raise NotImplementedError

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
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, x):
        import numpy as np

        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class OpenVinoSession(Session):
    """OpenVINO's CPU plugin at the artifact's precision (OPENVINO_PRECISION), not the plugin's default."""

    def __init__(self, path, threads=None, precision=None, providers=None):
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision in OPENVINO_PRECISION:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[precision]
        self.compiled = openvino_core().compile_model(str(path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin chose, asked or not
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        # An int8 model stays int8 in its quantized ops whatever the rest runs in.
        self.precision = "int8" if precision == "int8" else \
            OPENVINO_NAMES.get(self.inference_precision, self.inference_precision)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        self.providers = ["CPU"]

    def infer(self, x):
        import numpy as np

        result = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(result[self.output])


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
    torch is rarely installed. Output shapes come from the execution context after the input shape
    is set, so the dynamic batch of the optimisation profile works at any size inside it.
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
                raise SessionError("TensorRT execution failed")
            self._check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            cudart.cudaFree(d_in)
            cudart.cudaFree(d_out)
        return out.astype(np.float32)

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = self.runtime = None


SESSIONS = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVinoSession, "tensorrt": TensorRtSession}


def open_model(path, runtime, threads=None, precision=None, providers=None):
    """A session for the model file at `path` on `runtime` (onnxruntime, openvino or tensorrt)."""
    try:
        session_class = SESSIONS[runtime]
    except KeyError:
        raise SessionError(f"unknown runtime '{runtime}'; known: {', '.join(SESSIONS)}") from None
    return session_class(path, threads, precision, providers)
