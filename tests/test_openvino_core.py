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
