"""Multi-input models (BERT: int64 input_ids, attention_mask, token_type_ids with batch and sequence
axes) through export, sessions, engines, the latency harness and the TensorRT checks, while the
single-input image path stays as it was."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import called, make_fake_tensorrt
from onnx_graphs import cnn_onnx, qdq_conv_graph
from test_trtexec import fake_trtexec

from compress.exporting.torch_to_onnx import export_onnx_inputs, onnx_logits, parity_at_lengths
from compress.exporting.trt_lint import lint, summary_line
from deploy.engines import EngineUnavailable, get_engine, read_sidecar
from deploy.engines import tensorrt as trt_engine
from deploy.engines.interface import calibration_batches, onnx_inputs
from deploy.engines.trtexec import build_script, trtexec_args
from deploy.runner import harness, sessions
from deploy.runner.harness import LatencySettings, measure_latency, measure_rounds, predict, random_feeds
from deploy.runner.sessions import FeedError, OnnxRuntimeSession, OpenVinoSession

VOCAB = 100
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
SPECS = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "vocab_size": VOCAB},
         {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
         {"name": "token_type_ids", "dtype": "int64", "shape": ["batch", "sequence"]}]
QUICK = LatencySettings(warmup=1, warmup_seconds=0.0, runs=3, min_seconds=0.0)


class Classifier(torch.nn.Module):
    """BERT for sequence classification, called with positional tensors and returning only the logits."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def tokens(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids; the last row padded to half its length, so the mask matters."""
    generator = torch.Generator().manual_seed(seed * 1000 + length * 10 + batch)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, max(length // 2, 1):] = 0
    return {"input_ids": torch.randint(1, VOCAB, (batch, length), generator=generator), "attention_mask": mask,
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long)}


def numpy_feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in inputs.items()}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A random-weight two-layer BERT classifier and its ONNX (batch and sequence dynamic)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        vocab_size=VOCAB)
    model = Classifier(BertForSequenceClassification(config)).eval()
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    export_onnx_inputs(model, SPECS, tokens(2, 8), path, opset=17)
    return model, path


# --- export ---------------------------------------------------------------------------------------

def test_the_export_names_its_int64_inputs_with_batch_and_sequence_axes(bert):
    _, path = bert
    inputs = onnx_inputs(path)
    assert [spec["name"] for spec in inputs] == NAMES
    assert all(spec["dtype"] == "int64" and spec["shape"] == ["batch", "sequence"] for spec in inputs)
    # The embedding tables say how large an id may be: the word vocabulary, and the two token types.
    assert inputs[0]["vocab_size"] == VOCAB and inputs[2]["vocab_size"] == 2 and "vocab_size" not in inputs[1]
    output = onnx.load(str(path)).graph.output[0]
    assert output.name == "logits" and output.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_and_openvino_match_pytorch_at_every_length(bert, batch):
    model, path = bert
    lengths = [4, 16, 64]
    on_ort = parity_at_lengths(model, path, lambda length: tokens(batch, length), lengths)
    with OpenVinoSession(path, threads=1, precision="fp32") as session:
        on_openvino = parity_at_lengths(model, path, lambda length: tokens(batch, length), lengths, session.infer)
    for results in (on_ort, on_openvino):
        assert sorted(results) == lengths
        for length, report in results.items():
            assert report["sequence_length"] == length and report["samples"] == batch
            assert report["max_abs_error"] < 1e-4 and report["top1_agreement"] == 1.0, (length, report)


def test_the_export_needs_an_example_of_every_input(bert, tmp_path):
    model, _ = bert
    with pytest.raises(ValueError, match="example inputs lack token_type_ids"):
        export_onnx_inputs(model, SPECS, {k: v for k, v in tokens(1, 4).items() if k != "token_type_ids"},
                           tmp_path / "x.onnx")


# --- sessions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("open_session", [lambda p: OnnxRuntimeSession(p, threads=1),
                                          lambda p: OpenVinoSession(p, threads=1, precision="fp32")],
                         ids=["onnxruntime", "openvino"])
def test_sessions_feed_by_name_in_each_inputs_dtype(bert, open_session):
    model, path = bert
    inputs = tokens(3, 12)
    with torch.no_grad():
        expected = model(**inputs).numpy()
    with open_session(path) as session:
        assert session.input_names == NAMES and set(session.input_dtypes.values()) == {"int64"}
        # int32 ids (what a tokenizer may give) are fed as the model's int64, in any key order.
        int32 = {name: value.astype(np.int32) for name, value in reversed(list(numpy_feeds(inputs).items()))}
        np.testing.assert_allclose(session.infer(int32), expected, atol=1e-4)
        np.testing.assert_allclose(predict(session.infer, numpy_feeds(inputs), batch_size=2), expected, atol=1e-4)


def test_a_missing_or_unknown_input_is_named_in_one_line(bert):
    _, path = bert
    feeds = numpy_feeds(tokens(1, 4))
    with OnnxRuntimeSession(path, threads=1) as session:
        with pytest.raises(FeedError) as missing:
            session.infer({k: v for k, v in feeds.items() if k != "attention_mask"})
        assert str(missing.value) == ("missing input 'attention_mask' (the model takes input_ids, attention_mask, "
                                      "token_type_ids)")
        with pytest.raises(FeedError, match="unknown input 'position_ids'"):
            session.infer({**feeds, "position_ids": feeds["input_ids"]})
        with pytest.raises(FeedError, match="takes 3 inputs .*: pass a dict"):
            session.infer(feeds["input_ids"])
    with OpenVinoSession(path, threads=1) as session, pytest.raises(FeedError, match="missing input 'input_ids'"):
        session.infer({k: v for k, v in feeds.items() if k != "input_ids"})


def test_a_single_input_image_model_runs_as_before(tmp_path):
    path = cnn_onnx(tmp_path / "cnn.onnx")
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float64)  # cast to float32 as before
    for session in (OnnxRuntimeSession(path, threads=1), OpenVinoSession(path, threads=1, precision="fp32")):
        with session:
            assert session.input_names == ["input"] and session.input_dtypes == {"input": "float32"}
            np.testing.assert_allclose(session.infer(x), session.infer({"input": x}))
            np.testing.assert_allclose(session.infer(x), onnx_logits(path, x), atol=1e-5)


# --- harness --------------------------------------------------------------------------------------

def test_random_feeds_are_token_ids_a_full_mask_and_one_segment():
    pool = random_feeds(SPECS, batch_size=4, seed=0, count=3, sequence_length=16)
    assert len(pool) == 3
    for feeds in pool:
        assert list(feeds) == NAMES and all(v.shape == (4, 16) and v.dtype == np.int64 for v in feeds.values())
        assert feeds["input_ids"].min() >= 1 and feeds["input_ids"].max() < VOCAB
        assert (feeds["attention_mask"] == 1).all() and (feeds["token_type_ids"] == 0).all()
    assert not np.array_equal(pool[0]["input_ids"], pool[1]["input_ids"])  # distinct runs
    no_vocab = random_feeds([{**SPECS[0], "vocab_size": None}], 2, seed=0, count=1, sequence_length=512)
    assert no_vocab[0]["input_ids"].max() < harness.DEFAULT_VOCAB_SIZE
    with pytest.raises(ValueError, match="'input_ids' has a 'sequence' axis: give a sequence length"):
        random_feeds(SPECS, batch_size=1, seed=0)


def test_an_image_spec_gives_the_same_batches_as_an_input_shape():
    image = [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    by_spec = random_feeds(image, batch_size=2, seed=5, count=2)
    by_shape = harness.random_inputs((3, 32, 32), batch_size=2, seed=5, count=2)
    for feeds, batch in zip(by_spec, by_shape):
        np.testing.assert_array_equal(feeds["input"], batch)


def test_latency_of_a_multi_input_model_reports_tokens_per_second(bert):
    _, path = bert
    with OnnxRuntimeSession(path, threads=1) as session:
        row = measure_latency(session.infer, onnx_inputs(path), 2, QUICK, sequence_length=16)
    assert row["sequence_length"] == 16 and row["latency_ms"]["runs"] >= 3
    assert row["tokens_per_s"] == pytest.approx(harness.tokens_per_second(2, 16, row["latency_ms"]["p50"]))
    assert row["tokens_per_s"] == pytest.approx(row["throughput_per_s"] * 16)

    (rows,) = measure_rounds([lambda: OnnxRuntimeSession(path, threads=1)], SPECS, [1, 3], QUICK, rounds=2,
                             sequence_length=8)
    assert [r["batch_size"] for r in rows] == [1, 3] and all(r["rounds"] == 2 for r in rows)
    assert all(r["tokens_per_s"] == pytest.approx(r["batch_size"] * 8 * 1000 / r["latency_ms"]["p50"]) for r in rows)


def test_latency_of_an_image_model_keeps_its_rows(tmp_path):
    path = cnn_onnx(tmp_path / "cnn.onnx")
    with OnnxRuntimeSession(path, threads=1) as session:
        row = measure_latency(session.infer, (1, 8, 8), 4, replace(QUICK, runs=2))
        # Specs without a sequence axis: the same kind of row, no tokens.
        by_spec = measure_latency(session.infer, onnx_inputs(path), 4, replace(QUICK, runs=2), sequence_length=7)
    for measured in (row, by_spec):
        assert "tokens_per_s" not in measured and "sequence_length" not in measured
        assert measured["batch_size"] == 4 and measured["latency_ms"]["runs"] >= 2


# --- engines --------------------------------------------------------------------------------------

def test_onnx_runtime_builds_records_inputs_and_runs_a_transformer(bert, tmp_path):
    model, path = bert
    engine = get_engine("onnxruntime")
    plain = engine.build(path, tmp_path / "fp32", "fp32")
    optimized = engine.build(path, tmp_path / "fp32-opt", "fp32", transformer_optimize=True)
    assert plain.sidecar["inputs"] == onnx_inputs(path) and read_sidecar(plain.directory)["inputs"][0]["name"] == \
        "input_ids"
    fused = optimized.sidecar["transformer_optimized"]
    assert fused["model_type"] == "bert" and fused["fused_ops"] and "transformer_optimized" not in plain.sidecar
    domains = {n.domain for n in onnx.load(str(optimized.artifact)).graph.node}
    assert "com.microsoft" in domains  # ORT's own fused ops: the artifact is ONNX Runtime's alone
    feeds = numpy_feeds(tokens(3, 24))
    with engine.load(plain.artifact, 1) as a, engine.load(optimized.artifact, 1) as b:
        np.testing.assert_allclose(b.infer(feeds), a.infer(feeds), atol=1e-4)
    with pytest.raises(EngineUnavailable, match="transformer_optimize builds fp32 only"):
        engine.build(path, tmp_path / "int8-opt", "int8", transformer_optimize=True,
                     calibration={k: v for k, v in feeds.items()})


def calibration_rows(count: int, length: int = 16) -> dict[str, np.ndarray]:
    return numpy_feeds({name: torch.cat([tokens(1, length, seed=i)[name] for i in range(count)]) for name in NAMES})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_of_a_multi_input_model_calibrates_on_feed_dicts(bert, tmp_path, backend):
    model, path = bert
    built = get_engine(backend).build(path, tmp_path / backend, "int8", sources={"fp32": path},
                                      calibration=calibration_rows(40), timing={"rounds": 1}, timing_batches=[1])
    assert built.sidecar["quantization"]["calibration_samples"] == 40
    static = backend == "openvino" or built.sidecar["quantization"]["choice"]["chosen"] == "static"
    if backend == "onnxruntime":  # static Q/DQ or dynamic, whichever measured faster (tests/test_int8_choice.py)
        ops = {n.op_type for n in onnx.load(str(built.artifact)).graph.node}
        assert ("QuantizeLinear" if static else "DynamicQuantizeLinear") in ops
        assert built.sidecar["quantization"]["op_types"] == ["MatMul", "Gemm", "Gather"]
    inputs = tokens(3, 20)
    with torch.no_grad():
        reference = model(**inputs).numpy()
    padded = {name: value.clone() for name, value in inputs.items()}
    padded["input_ids"][-1, 10:] = 1  # under the mask of the last row
    with get_engine(backend).load(built.artifact, 1) as session:
        logits = session.infer(numpy_feeds(inputs))
        masked = session.infer(numpy_feeds(padded))
    assert logits.shape == reference.shape and np.isfinite(logits).all()
    assert np.abs(logits - reference).max() < 0.05  # int8 of a random model: close, not exact
    # the int8 attention still ignores padding; a dynamic activation scale is taken over the padded positions too
    np.testing.assert_allclose(masked, logits, atol=1e-6 if static else 0.01)


def test_openvino_compiles_a_multi_input_model_with_dynamic_lengths(bert, tmp_path):
    model, path = bert
    built = get_engine("openvino").build(path, tmp_path / "ov", "fp32")
    assert built.sidecar["inputs"] == onnx_inputs(path)
    with get_engine("openvino").load(built.artifact, 1) as session:
        for length in (4, 33):
            inputs = tokens(2, length)
            with torch.no_grad():
                np.testing.assert_allclose(session.infer(numpy_feeds(inputs)), model(**inputs).numpy(), atol=1e-4)


def test_calibration_batches_keep_int64_and_name_a_missing_input(bert):
    _, path = bert
    batches = calibration_batches(calibration_rows(5), onnx_inputs(path), batch_size=2)
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1] and batches[0]["input_ids"].dtype == np.int64
    rows = calibration_rows(2)
    del rows["token_type_ids"]
    with pytest.raises(ValueError, match="calibration data lacks input 'token_type_ids'"):
        calibration_batches(rows, onnx_inputs(path))
    images = calibration_batches(np.zeros((3, 1, 8, 8)), [{"name": "input", "dtype": "float32"}], batch_size=2)
    assert [b.shape for b in images] == [(2, 1, 8, 8), (1, 1, 8, 8)] and images[0].dtype == np.float32


# --- TensorRT, without TensorRT --------------------------------------------------------------------

PROFILE = {name: {"min": [1, 1], "opt": [8, 128], "max": [32, 512]} for name in NAMES}
GPU = {"name": "NVIDIA Jetson Orin (stand-in)", "compute_capability": "8.7"}


def test_the_profile_spans_batch_by_sequence_for_every_input(bert):
    _, path = bert
    assert trt_engine.input_profile_shapes(onnx_inputs(path), 1, 8, 32) == PROFILE
    image = [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert trt_engine.input_profile_shapes(image, 1, 4, 16) == {
        "input": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}}
    with pytest.raises(EngineUnavailable, match="axis 2 is dynamic \\('height'\\), neither the batch nor a sequence"):
        trt_engine.input_profile_shapes([{"name": "input", "shape": ["batch", 3, "height", 32]}], 1, 4, 16)
    with pytest.raises(ValueError, match="sequence profile must satisfy"):
        trt_engine.input_profile_shapes(onnx_inputs(path), 1, 8, 32, min_sequence=64, opt_sequence=16)


def test_trtexec_gets_every_inputs_shapes_in_one_flag():
    args = trtexec_args("bert.onnx", "bert.plan", "fp16", input_shapes=PROFILE, workspace_mb=512)
    assert args[4:7] == ["--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1",
                         "--optShapes=input_ids:8x128,attention_mask:8x128,token_type_ids:8x128",
                         "--maxShapes=input_ids:32x512,attention_mask:32x512,token_type_ids:32x512"]
    assert "--memPoolSize=workspace:512M" in args
    script = build_script("model.onnx", "model.plan", "fp32", input_shapes=PROFILE)
    assert "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1" in script
    with pytest.raises(ValueError, match="shapes of input 'attention_mask' must satisfy min <= opt <= max"):
        trtexec_args("m.onnx", "m.plan", "fp32", input_shapes={**PROFILE, "attention_mask": {
            "min": [1, 64], "opt": [8, 16], "max": [32, 512]}})
    # The single-input form is unchanged.
    assert trtexec_args("m.onnx", "m.plan", "fp32", (1, 3), (4, 3), (8, 3))[4:7] == [
        "--minShapes=input:1x3", "--optShapes=input:4x3", "--maxShapes=input:8x3"]


def test_the_python_builder_sets_a_shape_per_input_name(bert, tmp_path, monkeypatch):
    _, path = bert
    trt = make_fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: GPU)
    built = get_engine("tensorrt").build(path, tmp_path / "trt", "fp32", min_batch=1, opt_batch=4, max_batch=16,
                                         min_sequence=8, opt_sequence=64, max_sequence=256)
    assert called(trt, "set_shape") == [("set_shape", name, [1, 8], [4, 64], [16, 256]) for name in NAMES]
    assert len(called(trt, "add_optimization_profile")) == 1
    sidecar = read_sidecar(built.directory)
    assert sidecar["input_shapes"]["token_type_ids"] == {"min": [1, 8], "opt": [4, 64], "max": [16, 256]}
    assert sidecar["input_name"] == "input_ids" and sidecar["shapes"] == sidecar["input_shapes"]["input_ids"]
    assert sidecar["inputs"] == onnx_inputs(path)


def test_trtexec_builds_a_multi_input_model_where_only_the_cli_exists(bert, tmp_path, monkeypatch):
    _, path = bert
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: GPU)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_trtexec(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    get_engine("tensorrt").build(path, tmp_path / "trt", "fp32", min_batch=1, opt_batch=2, max_batch=4,
                                 min_sequence=1, opt_sequence=32, max_sequence=128)
    recorded = (tmp_path / "args.txt").read_text().split()
    assert "--optShapes=input_ids:2x32,attention_mask:2x32,token_type_ids:2x32" in recorded


class FakeCudaRuntime:
    """cuda-python's runtime calls the session makes, on host memory (ctypes buffers)."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self):
        self.buffers, self.freed = {}, []

    def cudaStreamCreate(self):
        return 0, 7

    def cudaMalloc(self, size):
        buffer = ctypes.create_string_buffer(size)
        self.buffers[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaMemcpyAsync(self, dst, src, size, kind, stream):
        ctypes.memmove(dst, src, size)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaFree(self, pointer):
        self.freed.append(pointer)
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)


def fake_engine_module(max_length: int = 64):
    """A `tensorrt` whose engine has int32 token inputs (int64 cast down) and sums ids under the mask."""
    trt = make_fake_tensorrt("10.3.0")
    dtypes = {"input_ids": "int32", "attention_mask": "int32", "token_type_ids": "int32", "logits": "float32"}

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return shape[1] <= max_length

        def get_tensor_shape(self, name):
            return (self.shapes["input_ids"][0], 2)

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def read(self, name):
            count = int(np.prod(self.shapes[name]))
            raw = (ctypes.c_int32 * count).from_address(self.addresses[name])
            return np.frombuffer(raw, np.int32).reshape(self.shapes[name])

        def execute_async_v3(self, stream):
            ids, mask = self.read("input_ids"), self.read("attention_mask")
            out = np.stack([(ids * mask).sum(1), mask.sum(1)], 1).astype(np.float32)
            ctypes.memmove(self.addresses["logits"], out.ctypes.data, out.nbytes)
            return True

    class Engine:
        num_io_tensors = 4

        def get_tensor_name(self, index):
            return [*NAMES, "logits"][index]

        def get_tensor_mode(self, name):
            return TensorIOMode.OUTPUT if name == "logits" else TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    trt.Runtime, trt.TensorIOMode, trt.nptype = Runtime, TensorIOMode, np.dtype
    return trt


def test_the_tensorrt_session_sets_each_shape_and_copies_each_input(tmp_path, monkeypatch):
    cudart = FakeCudaRuntime()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_engine_module())
    monkeypatch.setattr(sessions, "cuda_runtime", lambda: cudart)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    feeds = {"input_ids": np.array([[5, 6, 7], [1, 2, 3]]), "attention_mask": np.array([[1, 1, 0], [1, 1, 1]]),
             "token_type_ids": np.zeros((2, 3), np.int64)}
    with sessions.open_model(plan, "tensorrt") as session:
        assert session.input_names == NAMES and session.input_dtypes["input_ids"] == "int32"
        logits = session.infer(feeds)
        assert session.context.shapes == {name: (2, 3) for name in NAMES}
        with pytest.raises(FeedError, match="input 'input_ids' of shape \\[1, 65\\] is outside the engine's"):
            session.infer({name: np.ones((1, 65), np.int64) for name in NAMES})
        with pytest.raises(FeedError, match="missing input 'token_type_ids'"):
            session.infer({k: v for k, v in feeds.items() if k != "token_type_ids"})
    np.testing.assert_array_equal(logits, [[11, 2], [6, 3]])
    assert len(cudart.freed) == 4  # three inputs and the output, freed after the run


# --- TensorRT lint --------------------------------------------------------------------------------

def test_a_bert_export_lints_clean_with_notes(bert, tmp_path):
    _, path = bert
    report = lint(path)
    assert report["clean"], report["findings"]
    notes = {n["check"]: n["message"] for n in report["notes"]}
    assert set(notes) == {"int64_input", "sequence_axis", "transformer"}
    assert "input_ids, attention_mask, token_type_ids" in notes["int64_input"] and "int32" in notes["int64_input"]
    assert "2 attention block(s)" in notes["transformer"] and "LayerNormalization" in notes["transformer"]
    assert "note(s) in trt_lint.json" in summary_line("bert.onnx", report)

    optimized = tmp_path / "bert.ort.onnx"
    get_engine("onnxruntime").build(path, tmp_path / "opt", "fp32", transformer_optimize=True)
    optimized.write_bytes((tmp_path / "opt" / "model.onnx").read_bytes())
    fused = lint(optimized)
    assert not fused["clean"] and {f["check"] for f in fused["findings"]} == {"op"}
    assert all("transformer optimizer" in f["fix"] for f in fused["findings"])


def test_an_image_graph_has_no_transformer_notes_and_other_dynamic_axes_stay_errors(tmp_path):
    assert lint(cnn_onnx(tmp_path / "cnn.onnx"))["notes"] == []
    report = lint(qdq_conv_graph(input_shape=("batch", 1, "sequence", 8)))
    assert report["clean"] and [n["check"] for n in report["notes"]] == ["sequence_axis"]
    assert not lint(qdq_conv_graph(input_shape=("batch", 1, "height", 8)))["clean"]
