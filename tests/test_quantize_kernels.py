"""NNCF's fake quantization must work on a machine that has never built NNCF's C++ extension.

Each case runs in a child interpreter, because which functions NNCF uses is decided once per
process. `NNCF_EXTENSION_LOAD_TIMEOUT=5` stands for a busy machine: NNCF's compile of
`quantized_functions_cpu` takes 20 s on a quiet 2-core machine and minutes on a loaded one, so
anything that waits for it fails here the way it fails there after 60 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# PTQ, a QAT step (forward and backward through the quantizers), then save and load the result.
CHILD = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from compress.models import ModelSpec, build_model
    from compress.quantize.nncf_quant import load_quantized, quantize_model, quiet_nncf, save_quantized

    quiet_nncf()
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [4, 8]})
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    quantized = quantize_model(build_model(spec).eval(), x)
    quantized.train()
    loss = quantized(torch.from_numpy(x)).logsumexp(1).mean()
    loss.backward()
    save_quantized(sys.argv[1], quantized, spec)
    loaded, _, _ = load_quantized(sys.argv[1])
    with torch.no_grad():
        print("ok", float(loaded(torch.from_numpy(x)).abs().sum()))
""")


def build_dir(extensions: Path) -> Path:
    """Where NNCF builds (and torch locks) quantized_functions_cpu under TORCH_EXTENSIONS_DIR=extensions."""
    import torch

    return extensions / "nncf" / "quantized_functions_cpu" / torch.__version__


def quantize_in_child(tmp_path: Path, extensions: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "NNCF_EXTENSION_LOAD_TIMEOUT": "5"}
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "q.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quantization_on_a_machine_that_never_built_the_extension(tmp_path):
    extensions = tmp_path / "torch_extensions"
    child = quantize_in_child(tmp_path, extensions)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("ok")
    assert not list(extensions.rglob("build.ninja")), "a C++ build was started"


def test_a_lock_left_by_a_killed_build_does_not_block_quantization(tmp_path):
    extensions = tmp_path / "torch_extensions"
    lock = build_dir(extensions) / "lock"  # what torch's FileBaton leaves when its owner is killed -9
    lock.parent.mkdir(parents=True)
    lock.touch()
    child = quantize_in_child(tmp_path, extensions)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("ok")


def test_quantizers_use_the_pure_torch_functions_in_this_process():
    from nncf.torch.quantization import quantize_functions
    from nncf.torch.quantization.reference import ReferenceQuantize

    from compress.quantize.kernels import use_reference_functions

    use_reference_functions()
    forward = quantize_functions.QuantizedFunctionsCPU.get("Quantize_forward")
    assert isinstance(forward.__self__, ReferenceQuantize)
    import torch

    x = torch.tensor([[-1.0, -0.26, 0.0, 0.3, 2.0]])
    out = forward(x, torch.tensor(-1.0), torch.tensor(2.0), 5)  # 5 levels over [-1, 1]: steps of 0.5
    torch.testing.assert_close(out, torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]]))

