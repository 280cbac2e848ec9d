"""Every engine the build stage makes, checked against the model it came from on validation inputs.

An int8 engine that scores 0 while its Q/DQ ONNX is fine, or a PTQ engine that disagrees with its
fake-quantized model on 2 % of inputs, shows here, at build time, instead of as a mystery in the
benchmark: fp32/fp16/bf16 engines (and int8 engines quantized by the engine itself) are compared
with the torch model they were exported from, int8 engines built from the quantize stage's Q/DQ
ONNX with its fake-quantized torch model. Top-1 agreement and max/mean |diff| of the outputs go
into the engine's engine.json and the build outputs; `gates.min_engine_agreement` judges them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import write_json
from compress.distill.train import predict_logits
from compress.exporting.torch_to_onnx import parity
from deploy.runner.harness import predict

PARITY_SAMPLES = 512


class References:
    """The torch outputs engines are compared with, each computed once per build on the same val inputs."""

    def __init__(self, ctx):
        self.ctx = ctx
        val = ctx.data.val
        self.inputs = val.sample(range(len(val)), PARITY_SAMPLES)[0]
        self._logits: dict[str, np.ndarray] = {}

    def reference(self, model: str, precision: str, source: Path) -> tuple[str, np.ndarray]:
        """(what the engine is compared with, its logits on `inputs`)."""
        quantized = self.ctx.outputs.get("quantize") or {}
        qdq = (self.ctx.outputs.get("export") or {}).get("onnx_qdq")
        if model == "student" and precision == "int8" and qdq and source == self.ctx.path(qdq):
            return self._of("quantize", quantized["checkpoint"], fake_quantized=True)
        stage = "baseline" if model == "baseline" else "distill"
        return self._of(stage, self.ctx.outputs[stage]["checkpoint"])

    def _of(self, stage: str, checkpoint: str, fake_quantized: bool = False) -> tuple[str, np.ndarray]:
        if checkpoint not in self._logits:
            if fake_quantized:
                from compress.quantize.nncf_quant import load_quantized

                model = load_quantized(self.ctx.path(checkpoint))[0]
            else:
                from compress.models import load_model

                model = load_model(self.ctx.path(checkpoint))[0]
            self._logits[checkpoint] = predict_logits(model, self.inputs, 64).numpy()
        return checkpoint, self._logits[checkpoint]


def check_engine(refs: References, engine, built, model: str, precision: str) -> dict[str, Any]:
    """Parity of one built engine with its reference, written into its engine.json; the report entry."""
    reference_name, reference = refs.reference(model, precision, Path(built.sidecar["source_onnx"]))
    with engine.load(built.artifact) as session:
        outputs = predict(session.infer, refs.inputs, 64)
    report = parity(reference, outputs)
    limit = refs.ctx.pipeline.gates.engine_agreement(precision)
    report.update(reference=reference_name, min_agreement=limit, passed=report["top1_agreement"] >= limit)
    sidecar = {**built.sidecar, "parity": report}
    write_json(built.directory / "engine.json", sidecar)
    built.sidecar.update(parity=report)
    return report
