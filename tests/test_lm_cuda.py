"""A causal LM's teacher, student alone and KD student trained on a CUDA GPU (`pytest -m gpu`; skipped without one).

The models train on the GPU (the log says which) and come back to the CPU for export: the ONNX folders built
from them decode what torch does, as on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from compress.cli import main
from compress.core.fileio import read_json
from test_lm_pipeline import lm_config, write

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_lm_training_runs_on_the_gpu_and_the_engines_match_torch(tmp_path):
    config = lm_config(**{"stages.distill.teacher_top_k": 8, "stages.distill.loss": "forward_kl",
                          "stages.distill.hidden": {"layer_map": [[1, 2]]}, "stages.build.targets": ["onnxruntime:int4"],
                          "stages.benchmark": None, "stages.report": None})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(write(tmp_path, config)), "--run-dir", str(tmp_path / "run")])
    log = out.getvalue()
    assert code == 0, log[-3000:]
    for stage in ("teacher", "baseline", "distill"):
        assert f"[{stage}] training on cuda:0" in log, stage
    stages = read_json(tmp_path / "run" / "run.json")["stages"]
    assert stages["distill"]["outputs"]["summary"]["perplexity"] < 320  # learned something (vocabulary 320)
    for name, engine in stages["export"]["outputs"]["engines"].items():
        assert engine["parity"]["max_abs_diff"] < 1e-3, name  # prefill logits vs the torch model (on the CPU)
