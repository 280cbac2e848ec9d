"""The OpenVINO side of `compress diagnose`: every named float tensor of an IR, as the CPU plugin computes it.

OpenVINO keeps the ONNX tensor names on the ports of the ops it converts (NNCF's FakeQuantize nodes
sit between them), so an IR's intermediate tensors can be matched by name with the fp32 ONNX's.
Each named port becomes a model output before compiling, which keeps the plugin from fusing it
away, and the model compiles at the precision its engine.json records: what the benchmark ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import read_json

SKIPPED = ("Parameter", "Constant", "Result")


def ir_tensor_outputs(path: Path, x) -> tuple[dict[str, np.ndarray], dict[str, str], Any, list[str]]:
    """(values by tensor name, producing op type, the model, its own output names) of the IR at `path`."""
    from deploy.engines.interface import SIDECAR
    from deploy.runner.sessions import openvino_core, openvino_hint

    core = openvino_core()
    model = core.read_model(str(path))
    own = [name for port in model.outputs for name in port.get_names()]
    producers, marked = {}, []
    for op in model.get_ordered_ops():
        if op.get_type_name() in SKIPPED:
            continue
        for port in op.outputs():
            if port.get_names() and port.get_element_type().is_real():
                producers.update({name: op.get_type_name() for name in port.get_names()})
                marked.append(port)
    model.add_outputs(marked)
    sidecar_path = Path(path).parent / SIDECAR
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else {}
    hint = openvino_hint(sidecar.get("precision"), sidecar.get("float_precision")) or "f32"
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    feeds = x if isinstance(x, dict) else [np.ascontiguousarray(x, dtype=np.float32)]
    result = compiled(feeds)
    values = {}
    for port in compiled.outputs:
        value = np.asarray(result[port])
        if value.dtype.kind == "f":
            values.update({name: value for name in port.get_names()})
    return values, producers, model, own


def fake_quantizers_near(model, tensor: str) -> list[str]:
    """The FakeQuantize ops that read this tensor, and those feeding the op that makes it."""
    near = []
    for op in model.get_ordered_ops():
        outputs = [name for port in op.outputs() for name in port.get_names()]
        if tensor not in outputs:
            continue
        for port in op.inputs():
            source = port.get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize":
                near.append(f"FakeQuantize {source.get_friendly_name()} (feeds it)")
        for port in op.outputs():
            for target in port.get_target_inputs():
                node = target.get_node()
                if node.get_type_name() == "FakeQuantize":
                    near.append(f"FakeQuantize {node.get_friendly_name()} (reads it)")
    return near
