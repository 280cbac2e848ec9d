"""One OpenVINO Core per process: sessions opened and freed in any order leave the process able to take signals.

Each Core's CPU plugin installs a signal stack on its thread and restores the one it found when freed.
Two Cores freed in the order they were made leave the thread on an unmapped stack, and the next signal
with a Python handler (the SIGCHLD handler DataLoader workers install, when any child process exits)
killed the whole test run with SIGSEGV. The check runs in a child interpreter, so a regression fails
this test instead of the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import faulthandler, gc, signal, subprocess, sys
    faulthandler.enable()  # as under pytest: Python's handlers run on the alternate signal stack
    import numpy as np
    from deploy.runner.sessions import OpenVinoSession

    path = sys.argv[1]
    first = OpenVinoSession(path, threads=1, precision="fp32")
    second = OpenVinoSession(path, threads=1, precision="fp32")
    x = np.zeros((1, 3, 8, 8), np.float32)
    first.infer(x), second.infer(x)
    del first
    gc.collect()
    del second  # freed in the order made: the order that broke the signal stack
    gc.collect()
    signal.signal(signal.SIGCHLD, lambda *args: None)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print("signals still arrive")
""")


def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_sessions_freed_in_any_order_leave_signals_deliverable(tmp_path):
    pytest.importorskip("openvino")
    model = tiny_onnx(tmp_path / "tiny.onnx")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(model)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "signals still arrive" in done.stdout


ACCURACY_CONTROL = textwrap.dedent("""
    import faulthandler, gc, signal, subprocess, sys
    faulthandler.enable()
    from pathlib import Path
    import numpy as np
    import openvino as ov
    import torch
    from compress.exporting.torch_to_onnx import export_onnx
    from deploy.engines.openvino import nncf_quantize_ir_controlled

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10)).eval()  # random weights: predictions of every class
    path = Path(sys.argv[1])
    export_onnx(model, (3, 8, 8), path)
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()  # float top-1 is 100 %
    # calibrated on inputs 20x too small: every layer clips, so NNCF reverts layer after layer
    _, record = nncf_quantize_ir_controlled(ov.convert_model(str(path)), x * 0.05, (x, y),
                                            {"max_accuracy_drop": 1e-9}, [{"name": "input", "dtype": "float32"}])
    assert record["reverted_ops"], record  # NNCF went through candidates, each compiled
    gc.collect()
    signal.signal(signal.SIGCHLD, lambda *args: None)
    for _ in range(3):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    print("signals still arrive")
""")


def test_nncf_accuracy_control_leaves_signals_deliverable(tmp_path):
    """NNCF's accuracy control compiles a model per candidate, each with a Core of its own, freed in any order:
    it ran inside the suite, and the next child process to exit killed the run with SIGSEGV."""
    pytest.importorskip("openvino")
    done = subprocess.run([sys.executable, "-c", ACCURACY_CONTROL, str(tmp_path / "cnn.onnx")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "signals still arrive" in done.stdout
