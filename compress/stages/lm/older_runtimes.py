"""An onnxruntime-genai folder's model.onnx rewritten so that older ONNX Runtimes load it, meaning unchanged.

onnxruntime-genai's model builder stamps its graph with the newest ONNX opset (22) and gives its contrib ops
every input and attribute the newest ONNX Runtime knows, even where they are empty or off. ONNX Runtime 1.19,
the last release for Python 3.8 (JetPack 5's), refuses such a file although it runs every operation in it. Each
rewrite here is one the ONNX specification says changes nothing:

- the default domain's opset lowered to the lowest version at which every operator of the graph resolves to
  the schema it resolves to now (onnx.defs), so no operator's meaning moves;
- trailing empty optional inputs removed (an empty name means "not given", as a missing input does);
- attributes set to the value that means "off", and that older runtimes do not know, removed (the kernel's
  default is that value: OFF_ATTRIBUTES).

The graph is read without its weights (model.onnx.data stays as it is), so this takes milliseconds at any size.
Operators an older runtime lacks (an int4 folder's quantized embedding table, GatherBlockQuantized) stay as
they are: such a folder needs a newer runtime, or build.quantize_embeddings: false.
"""

from __future__ import annotations

from pathlib import Path

# (domain, operator) -> {attribute: the value whose meaning is "off", the kernel's default}.
OFF_ATTRIBUTES = {("com.microsoft", "GroupQueryAttention"): {"softcap": 0.0}}


def lowest_opset(model) -> int:
    """The lowest default-domain opset at which every operator of `model` keeps the schema of its stamped opset."""
    from onnx import defs

    stamped = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    lowest = min(stamped, 7)  # ONNX Runtime supports opsets from 7 on
    for op_type in {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}:
        try:
            lowest = max(lowest, defs.get_schema(op_type, stamped, "").since_version)
        except defs.SchemaError:  # an ONNX Runtime operator registered in the default domain, not an ONNX one
            continue
    return lowest


def rewrite_for_older_runtimes(model_path: Path) -> dict:
    """Rewrite `model_path` in place (graph only); what changed: {"opset": (from, to), "inputs": n, "attributes": n}."""
    import onnx
    from onnx.helper import get_attribute_value

    model = onnx.load(str(model_path), load_external_data=False)
    default = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    stamped, lowest = default.version, lowest_opset(model)
    default.version = lowest
    dropped_inputs = dropped_attributes = 0
    for node in model.graph.node:
        names = list(node.input)
        while names and names[-1] == "":
            names.pop()
        if len(names) != len(node.input):
            dropped_inputs += len(node.input) - len(names)
            del node.input[:]
            node.input.extend(names)
        off = OFF_ATTRIBUTES.get((node.domain, node.op_type), {})
        kept = [a for a in node.attribute if a.name not in off or get_attribute_value(a) != off[a.name]]
        if len(kept) != len(node.attribute):
            dropped_attributes += len(node.attribute) - len(kept)
            del node.attribute[:]
            node.attribute.extend(kept)
    onnx.save(model, str(model_path))
    return {"opset": [stamped, lowest], "inputs": dropped_inputs, "attributes": dropped_attributes}
