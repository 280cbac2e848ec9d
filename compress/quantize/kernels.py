"""NNCF's fake quantization on the CPU runs as plain torch ops: NNCF's C++ extension is never built.

NNCF computes a quantizer on a CPU tensor with `quantized_functions_cpu`, a C++ extension that
torch compiles the first time one runs, into the shared `~/.cache/torch_extensions`, under a 60 s
limit (`NNCF_EXTENSION_LOAD_TIMEOUT`). On a 2-core machine that compile took 90 s with the machine
almost idle and minutes while other work ran: quantization then failed with NNCF's timeout and the
compiler went on as an orphan. A compile killed part-way (Ctrl-C, kill -9, a CI timeout) left
torch's `lock` file behind (torch before 2.14 locks by the file's existence), so every later run
on the machine waited out the limit and failed again, or with the limit off waited forever; torch
2.14 holds an advisory lock instead, but the next run still starts the compile again under the
same limit, and on a busy machine fails the same way.

The options were to build the extension ourselves (a folder of our own, a lock that knows its
owner, a wait with elapsed time) or to not build it. NNCF ships the same functions in pure torch
(`ReferenceQuantize`, its own fallback when the compile fails, but not when it times out), and
measured per process-CPU second they cost little: PTQ calibration and batch-1 evaluation the same,
a QAT training step 1.04x (resnet8x4, 32x32, batch 64) to 1.35x (the digits CNN, where a step takes
10 ms) the extension's time. A first run saves the 90 s to minutes of compiling, which that
difference pays back only after tens of thousands of QAT steps. So nothing is built, nothing is
shared between runs, and nothing can be left locked. NNCF's `ReferenceQuantizedFunctions` wraps
the same functions in `torch.compile`, which compiles C++ through inductor just as slowly: the
plain functions are used.

CUDA tensors still go to NNCF's CUDA extension (built with nvcc on a GPU machine): not measured.
"""

from __future__ import annotations

from typing import Any, Callable


class ReferenceFunctions:
    """Answers NNCF's `QuantizedFunctionsCPU.get(name)` with the pure-torch function of that name."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] | None = None

    def get(self, name: str) -> Callable[..., Any]:
        if self._functions is None:
            from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

            reference = ReferenceQuantize(backend_type=ReferenceBackendType.TORCH)
            self._functions = {"Quantize_forward": reference.forward, "Quantize_backward": reference.backward}
        if name not in self._functions:
            raise AttributeError(f"NNCF asked for quantization function '{name}', which has no pure-torch version")
        return self._functions[name]


REFERENCE = ReferenceFunctions()
DESCRIPTION = "fake quantization in plain torch ops (NNCF's C++ extension is not built)"


def use_reference_functions() -> str:
    """Route this process's CPU fake quantization to the pure-torch functions; returns what the log says.

    NNCF's quantizers look `QuantizedFunctionsCPU` up in their module at every call, so replacing
    that name takes effect for models already built too. Idempotent.
    """
    from nncf.torch.quantization import quantize_functions

    quantize_functions.QuantizedFunctionsCPU = REFERENCE
    return DESCRIPTION
