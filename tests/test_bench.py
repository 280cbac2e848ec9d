"""The latency/accuracy harness on a tiny model for every backend, and `compress benchmark FILE`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.measuring.artifacts import open_session
from deploy.runner.harness import (LatencySettings, accuracy_report, latency_row, latency_stats, measure_latency,
                            measure_rounds, median_halfwidth, noise_note, order_uncertain, peak_rss_mb, predict,
                            repeat_spread, reset_peak_rss, round_stats, within_noise)
from compress.cli import main
from compress.exporting.torch_to_onnx import export_onnx
from compress.models import ModelSpec, build_model, save_checkpoint
from deploy.engines import ENGINES, Engine, Session
from deploy.runner.sessions import openvino_core

SHAPE = (1, 8, 8)
QUICK = LatencySettings(warmup=2, warmup_seconds=0.0, runs=5, min_seconds=0.02)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """One tiny CNN as a torch checkpoint, an ONNX file and an OpenVINO IR."""
    folder = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16]})
    model = build_model(spec).eval()
    save_checkpoint(folder / "model.pt", model, spec)
    export_onnx(model, SHAPE, folder / "model.onnx")
    paths = {"torch": folder / "model.pt", "onnxruntime": folder / "model.onnx"}
    try:
        import openvino as ov

        ov.save_model(ov.convert_model(str(folder / "model.onnx")), str(folder / "model.xml"))
        paths["openvino"] = folder / "model.xml"
    except ImportError:
        pass
    return paths


class CompiledOpenVino(Session):
    """A real OpenVINO compiled model, for machines where the openvino engine is not registered."""

    def __init__(self, path: Path, threads: int):
        self.model = openvino_core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                "INFERENCE_PRECISION_HINT": "f32"})

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)[0]


def session_for(backend: str, path: Path):
    if backend == "openvino" and "openvino" not in ENGINES:
        return CompiledOpenVino(path, 1)
    return open_session(path, backend, threads=1)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_the_harness_measures_a_tiny_model_on_every_backend(backend, artifacts):
    if backend not in artifacts:
        pytest.skip(f"{backend} is not installed")
    x = np.random.default_rng(1).standard_normal((20, *SHAPE)).astype(np.float32)
    with session_for("torch", artifacts["torch"]) as reference:
        expected = predict(reference.infer, x, batch_size=7)
    with session_for(backend, artifacts[backend]) as session:
        logits = predict(session.infer, x, batch_size=7)
    (rows,) = measure_rounds([lambda: session_for(backend, artifacts[backend])], SHAPE, [1, 4], QUICK, rounds=2)
    # Same inputs, same preprocessing, same answers. OpenVINO's CPU plugin runs bf16 by default on CPUs
    # with AMX/AVX512-BF16 unless INFERENCE_PRECISION_HINT is f32: hence its looser tolerance.
    np.testing.assert_allclose(logits, expected, atol=1e-4 if backend != "openvino" else 5e-3)
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        lat = r["latency_ms"]
        assert lat["runs"] >= 2 * QUICK.runs and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["std"] >= 0 and isinstance(lat["noisy"], bool) and r["rounds"] == 2
        assert len(lat["round_p50s"]) == 2 and lat["p50_spread"] > 0
        assert r["throughput_per_s"] == pytest.approx(r["batch_size"] * 1000 / lat["p50"])
        assert r["peak_rss_mb"] > 10 and r["warmup_runs"] >= QUICK.warmup


def test_inputs_are_fresh_random_batches_of_the_right_shape_never_zeros():
    seen: list[np.ndarray] = []

    def infer(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return x.reshape(len(x), -1)[:, :10]

    measure_latency(infer, SHAPE, 3, LatencySettings(warmup=2, warmup_seconds=0, runs=10, min_seconds=0))
    assert len(seen) == 12 and all(x.shape == (3, *SHAPE) and x.dtype == np.float32 for x in seen)
    assert all(np.count_nonzero(x) == x.size for x in seen)
    assert all(not np.array_equal(a, b) for a, b in zip(seen, seen[1:]))  # never the same batch twice in a row
    assert abs(np.concatenate(seen).std() - 1.0) < 0.2


def test_runs_continue_until_both_the_count_and_the_minimum_time_are_reached():
    def sleepy(x: np.ndarray) -> np.ndarray:
        time.sleep(0.002)
        return x

    by_count = measure_latency(sleepy, SHAPE, 1, LatencySettings(warmup=1, warmup_seconds=0, runs=7, min_seconds=0))
    assert by_count["latency_ms"]["runs"] == 7
    started = time.perf_counter()
    by_time = measure_latency(sleepy, SHAPE, 1, LatencySettings(warmup=1, warmup_seconds=0.05, runs=3, min_seconds=0.1))
    assert by_time["latency_ms"]["runs"] > 3 and by_time["warmup_runs"] > 1
    assert time.perf_counter() - started >= 0.15
    assert by_time["latency_ms"]["p50"] >= 2.0


def test_a_wide_spread_is_flagged_as_noisy_with_a_note():
    steady = latency_stats([1.0, 1.01, 0.99, 1.02, 1.0, 0.98] * 10)
    assert not steady["noisy"] and noise_note(steady) is None
    busy = latency_stats([1.0] * 80 + [3.0] * 20)
    assert busy["noisy"] and "machine was busy" in noise_note(busy)
    assert busy["p50"] == 1.0 and busy["p90"] == 3.0 and busy["iqr"] == 0.0


def test_peak_memory_is_per_artifact_after_a_reset():
    reset_peak_rss()
    before = peak_rss_mb()
    block = np.ones(40 * 2 ** 20 // 8)  # 40 MB touched
    during = peak_rss_mb()
    del block
    assert during - before >= 30
    if reset_peak_rss():  # Linux: the high-water mark goes back down to what is resident now
        assert peak_rss_mb() < during - 20


def test_accuracy_top1_top5_agreement_and_per_class():
    labels = np.array([0, 1, 2, 2])
    logits = np.array([[9, 1, 0, 0, 0, 0], [0, 1, 9, 0, 0, 0], [0, 0, 9, 1, 0, 0], [9, 0, -1, 0, 0, 1]], float)
    report = accuracy_report(logits, labels, teacher_top1=np.array([0, 1, 2, 2]))
    assert report["top1"] == 0.5 and report["top5"] == 0.75 and report["agreement_with_teacher"] == 0.5
    assert report["per_class"] == {0: 1.0, 1: 0.0, 2: 0.5}


class NumpyPlanSession(Session):
    def __init__(self, weights: np.ndarray):
        self.weights = weights

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.weights


class StandInTensorRT(Engine):
    """TensorRT cannot run here (no GPU, not installable): a stand-in that honours the Engine interface."""

    backend = "tensorrt"
    precisions = ("fp16",)
    loaded: list[Path] = []

    @classmethod
    def version(cls) -> str:
        return "stand-in"

    def _build(self, onnx_path, out_dir, precision, **options):
        raise NotImplementedError

    def load(self, artifact: Path, threads: int | None = None) -> Session:
        StandInTensorRT.loaded.append(Path(artifact))
        return NumpyPlanSession(np.ones((64, 10), np.float32))


def test_a_tensorrt_plan_goes_through_the_same_harness(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ENGINES, "tensorrt", StandInTensorRT)
    folder = tmp_path / "student.tensorrt.fp16"
    folder.mkdir()
    (folder / "model.plan").write_bytes(b"plan")
    (folder / "engine.json").write_text(json.dumps({"backend": "tensorrt", "precision": "fp16", "artifact": "model.plan",
                                                    "input_shape": [1, 1, 8, 8]}))
    assert main(["benchmark", str(folder), "--batch", "1,2", "--runs", "3", "--min-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert StandInTensorRT.loaded[-1] == folder / "model.plan"
    assert [line.split()[:3] for line in out.splitlines()[2:4]] == [["tensorrt", "fp16", "1"], ["tensorrt", "fp16", "2"]]


def tensorrt_ready() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and "tensorrt" in ENGINES


@pytest.mark.skipif(not tensorrt_ready(), reason="needs TensorRT, a CUDA GPU and the tensorrt engine")
def test_a_real_tensorrt_engine_is_measured_by_the_harness(artifacts, tmp_path):
    from deploy.engines import get_engine

    built = get_engine("tensorrt").build(artifacts["onnxruntime"], tmp_path / "trt", "fp32")
    (rows,) = measure_rounds([lambda: open_session(built.artifact, "tensorrt", threads=1)], SHAPE, [1, 4], QUICK)
    assert all(r["latency_ms"]["p50"] > 0 for r in rows)


def test_benchmark_command_prints_the_table_and_writes_rows(artifacts, tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    assert main(["benchmark", str(artifacts["onnxruntime"]), "--batch", "1,4", "--runs", "5", "--min-seconds", "0",
                 "--threads", "1", "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["backend", "precision", "batch"]
    assert [line.split()[:3] for line in lines[2:4]] == [["onnxruntime", "fp32", "1"], ["onnxruntime", "fp32", "4"]]
    saved = json.loads(out_json.read_text())
    assert saved["input_shape"] == list(SHAPE) and saved["env"]["threads"] == 1
    for row in saved["rows"]:
        assert {"model", "artifact", "backend", "precision", "batch_size", "latency_ms", "throughput_per_s",
                "size_mb", "peak_rss_mb", "threads"} <= set(row) and row["size_mb"] > 0

    assert main(["--quiet", "benchmark", str(artifacts["torch"]), "--runs", "3", "--min-seconds", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["torch", "fp32", "1"]


def test_benchmark_command_bad_input_is_one_line_and_exit_2(artifacts, tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"x")
    onnx_path = str(artifacts["onnxruntime"])
    cases = [
        (["benchmark", str(tmp_path / "missing.onnx")], "missing.onnx: file not found"),
        (["benchmark", onnx_path, "--batch", "1,x"], "--batch: expected comma-separated integers, got '1,x'"),
        (["benchmark", onnx_path, "--batch", "0"], "--batch: expected positive integers, got '0'"),
        (["benchmark", onnx_path, "--backend", "nosuch"], "--backend: unknown backend 'nosuch'"),
        (["benchmark", onnx_path, "--runs", "0"], "--runs: must be >= 1"),
        (["benchmark", onnx_path, "--rounds", "0"], "--rounds: must be >= 1, got 0"),
        (["benchmark", str(unknown)], "weights.bin: cannot tell the backend from the suffix '.bin'"),
        (["benchmark", str(junk)], "junk.onnx: cannot be loaded by onnxruntime"),
        (["benchmark", onnx_path, "--shape", "3,32,32"], "model.onnx: inference failed for input shape (N, 3, 32, 32)"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err


def test_the_repeat_spread_is_the_t_interval_of_the_rounds_p50_for_the_difference_of_two_benchmarks():
    rounds = [[1.0] * 50, [2.0] * 50, [3.0] * 50]  # round p50s 1, 2, 3: s = 1, R = 3, t(2) = 4.303
    assert repeat_spread(rounds) == pytest.approx(4.303 * 1.0 * np.sqrt(2 / 3))
    # One round cannot see load-to-load variation: only the pooled median's sampling error remains.
    one = np.random.default_rng(0).normal(10.0, 1.0, 400)
    assert 0 < repeat_spread([list(one)]) < 0.4
    # Identical rounds: the floor (the median's own sampling error) keeps the spread above zero.
    same = repeat_spread([list(one), list(one), list(one)])
    assert same > 0 and same == pytest.approx(np.sqrt(2) * median_halfwidth(np.tile(one, 3)))


def test_rounds_that_disagree_are_flagged_noisy_with_the_range_in_the_note():
    steady = round_stats([[1.0, 1.01, 0.99, 1.02] * 10, [1.0, 1.02, 0.98, 1.01] * 10, [1.01, 0.99, 1.0, 1.0] * 10])
    assert not steady["noisy"] and noise_note(steady) is None and steady["runs"] == 120
    shifted = round_stats([[0.20] * 40, [0.25] * 40, [0.25] * 40])  # a load that landed slower
    assert shifted["round_p50s"] == [0.20, 0.25, 0.25] and shifted["noisy"]
    assert "rerun may land up to ±" in noise_note(shifted) and "0.2 to 0.25 ms" in noise_note(shifted)
    row = latency_row(4, [[2.0] * 10, [2.0] * 10], warmup_runs=6)
    assert row["rounds"] == 2 and row["throughput_per_s"] == 2000.0 and "note" not in row


def test_two_simulated_benchmarks_agree_within_the_spread_only_when_it_comes_from_rounds():
    """A machine whose speed moves from load to load by more than the runs within a load show: the
    spread from 3 rounds covers a rerun (95% by construction, with both spreads ~98%); one round's
    sampling error does not."""
    rng = np.random.default_rng(7)

    def benchmark(rounds: int) -> dict:
        return round_stats([list(rng.normal(rng.normal(5.0, 0.15), 0.3, 200)) for _ in range(rounds)])

    pairs = 400
    with_rounds = sum(within_noise(benchmark(3), benchmark(3)) for _ in range(pairs)) / pairs
    one_round = sum(within_noise(benchmark(1), benchmark(1)) for _ in range(pairs)) / pairs
    assert with_rounds >= 0.93
    assert one_round < 0.6


def test_two_artifacts_are_told_apart_by_the_interval_of_their_difference():
    # ±a and ±b are each for a rerun of one artifact; their difference's interval is √((±a² + ±b²) / 2).
    assert order_uncertain({"p50": 1.0, "p50_spread": 0.1}, {"p50": 1.09, "p50_spread": 0.1}) is True
    assert order_uncertain({"p50": 1.0, "p50_spread": 0.1}, {"p50": 1.11, "p50_spread": 0.1}) is False
    steady, noisy = {"p50": 0.016, "p50_spread": 0.012}, {"p50": 0.109, "p50_spread": 0.096}
    assert order_uncertain(steady, noisy) is False and within_noise(steady, noisy) is True  # 0.093 vs 0.068 / 0.096
    assert order_uncertain({"p50": 1.0}, {"p50": 1.0, "p50_spread": 0.1}) is None


def test_within_noise_compares_the_difference_with_the_larger_spread():
    assert within_noise({"p50": 1.0, "p50_spread": 0.1}, {"p50": 1.15, "p50_spread": 0.2}) is True
    assert within_noise({"p50": 1.0, "p50_spread": 0.1}, {"p50": 1.15, "p50_spread": 0.1}) is False
    assert within_noise({"p50": 1.0}, {"p50": 1.01}) is None  # results from before the spread was recorded


def test_rounds_interleave_the_artifacts_and_load_each_afresh_every_round():
    events: list[str] = []

    class Recorded(Session):
        def __init__(self, name: str):
            self.name = name
            events.append(f"open {name}")

        def infer(self, x: np.ndarray) -> np.ndarray:
            return x

        def close(self) -> None:
            events.append(f"close {self.name}")

    first_loads: list[int] = []
    rows = measure_rounds([lambda: Recorded("a"), lambda: Recorded("b")], SHAPE, [1, 2], QUICK, rounds=3,
                          on_first_load=lambda i, session: first_loads.append(i))
    assert events == ["open a", "close a", "open b", "close b"] * 3
    assert first_loads == [0, 1]
    assert [[r["batch_size"] for r in per] for per in rows] == [[1, 2], [1, 2]]
    assert all(r["rounds"] == 3 and len(r["latency_ms"]["round_p50s"]) == 3 for per in rows for r in per)


def test_benchmark_command_loads_the_artifact_afresh_for_each_round(artifacts, tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    assert main(["--quiet", "benchmark", str(artifacts["onnxruntime"]), "--rounds", "3", "--runs", "5",
                 "--min-seconds", "0", "--threads", "1", "--json", str(out_json)]) == 0
    (row,) = json.loads(out_json.read_text())["rows"]
    p50s = row["latency_ms"]["round_p50s"]
    assert len(p50s) == 3 and row["rounds"] == 3 and row["latency_ms"]["runs"] >= 15
    assert min(p50s) <= row["latency_ms"]["p50"] <= max(p50s)  # over the runs of every round
    assert row["latency_ms"]["p50_spread"] > 0


def test_measuring_rounds_leaves_the_process_peak_memory_alone():
    """No /proc/self/clear_refs: `/usr/bin/time -v` and the like must still see the run's real peak."""
    from deploy.runner.harness import proc_status_kb

    if proc_status_kb("VmHWM") is None:
        pytest.skip("no /proc/self/status here")
    block = np.ones(96 * 2 ** 20 // 8)  # 96 MB touched, then given back: the peak stays above what is resident
    del block
    peak_before = proc_status_kb("VmHWM")

    class Identity(Session):
        def infer(self, x: np.ndarray) -> np.ndarray:
            return x

    (rows,) = measure_rounds([Identity], SHAPE, [1], QUICK, rounds=2)
    assert proc_status_kb("VmHWM") >= peak_before
    assert rows[0]["peak_rss_mb"] >= round(peak_before / 1024, 1)  # the process peak so far


def openvino_default_precision(path: Path, hint: str | None = None) -> str:
    """What OpenVINO's CPU plugin computes this model in, asked for `hint` or not, in the toolchain's words."""
    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    chosen = openvino_core().compile_model(str(path), "CPU", config).get_property("INFERENCE_PRECISION_HINT")
    return {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}[chosen.get_type_name()]


def test_adhoc_openvino_rows_say_the_precision_that_ran_and_take_one_asked_for(artifacts):
    """On a CPU with AMX or AVX512-BF16 an ONNX file runs in bf16 unless fp32 is asked for: the row says so."""
    pytest.importorskip("openvino")
    from compress.measuring.adhoc import benchmark_file

    onnx_path = artifacts["onnxruntime"]
    (row,) = benchmark_file(onnx_path, "openvino", [1], None, 1, QUICK, rounds=1, memory=False)["rows"]
    assert row["precision"] == openvino_default_precision(onnx_path)
    (row,) = benchmark_file(onnx_path, "openvino", [1], None, 1, QUICK, rounds=1, memory=False,
                            precision="fp32")["rows"]
    assert row["precision"] == "fp32"
    (row,) = benchmark_file(onnx_path, "openvino", [1], None, 1, QUICK, rounds=1, memory=False,
                            precision="bf16")["rows"]
    assert row["precision"] == openvino_default_precision(onnx_path, "bf16")


def test_an_openvino_session_says_what_it_computes_in(artifacts):
    """What the benchmark stage labels a row with when the plugin ran something else than the artifact's precision."""
    pytest.importorskip("openvino")
    from deploy.runner.sessions import OpenVinoSession

    xml = artifacts["openvino"]
    assert OpenVinoSession(xml, 1, "fp32").precision == "fp32"
    assert OpenVinoSession(xml, 1, "fp16").precision == openvino_default_precision(xml, "f16")
    assert OpenVinoSession(xml, 1, "int8").precision == "int8"  # quantized ops stay int8 whatever the rest runs in
    assert OpenVinoSession(xml, 1).inference_precision in ("f32", "bf16", "f16")


def test_benchmark_command_precision_is_for_openvino_only(artifacts, capsys):
    assert main(["benchmark", str(artifacts["onnxruntime"]), "--precision", "bf16", "--no-memory", "--rounds", "1",
                 "--runs", "2", "--min-seconds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision: only openvino" in err[0], err
