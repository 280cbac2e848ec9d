"""The val sample a text model's bundle carries: token ids by the export's tokenizer.json, and the texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import UsageError
from compress.tasks.text_classification.tokenizer import encode, load_tokenizer
from deploy.bundle import read_run


def text_sample(run_dir: Path, texts: list[str], text: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """The texts' token ids by the export's tokenizer.json (the file the bundle ships), and the texts themselves
    as UTF-8 end to end with their offsets, so that the device can tokenise them again and compare."""
    exported = read_run(run_dir)["stages"].get("export", {}).get("outputs", {}).get("tokenizer")
    if not exported:
        raise UsageError(f"{run_dir / 'run.json'}: stages.export.tokenizer: no tokenizer.json recorded for this text "
                         "model (run the export stage again)")
    tokenizer = load_tokenizer(run_dir / exported, "stages.export.tokenizer")
    arrays = encode(tokenizer, texts, int(text["max_length"]), text.get("pad_to"))
    unknown = [name for name in names if name not in arrays]
    if unknown:
        raise UsageError(f"{run_dir / 'run.json'}: stages.export.onnx: input {unknown[0]!r} is not one a tokenizer "
                         f"makes ({', '.join(arrays)})")
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return {**{name: arrays[name] for name in names}, "texts_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "text_offsets": offsets}


