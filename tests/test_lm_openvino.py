"""Causal LMs as stateful OpenVINO IR folders (openvino-genai's form), fp32 and NNCF int8/int4 weights: the
toolchain's loop and openvino-genai's own LLMPipeline decode what torch decodes from an fp32 folder, batches too;
compressed folders are smaller and measured; and through the pipeline (with a width-pruned student) they are
built, checked, benchmarked and deployed to a device like the onnxruntime-genai folders."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compress.cli import main
from compress.stages.lm.openvino_lm import export_openvino, genai_greedy
from compress.tasks.causal_lm import corpus
from compress.tasks.causal_lm.models import build_lm, save_lm
from deploy.runner.ov_generation import OpenVINOGenerator, open_generator

# Only looked up, never imported: openvino-genai runs in child processes (compress.stages.lm.openvino_lm), and the
# suite's process never holds its native extension.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino_genai") is None, reason="needs openvino-genai")

PROMPTS = [[5, 17, 40, 99], [7, 8, 9, 10, 11]]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A Llama (grouped-query attention) and a GPT-2, random weights, as Hugging Face folders."""
    base = tmp_path_factory.mktemp("ov-lm")
    tokenizer = corpus.train_tokenizer(iter(["def f(x):\n    return x + 1\n" * 20]), 300)
    corpus.save_hf_tokenizer(tokenizer, base / "tokenizer")
    found = {}
    for name, sizes in (("llama", {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2}),
                        ("gpt2", {"layers": 2, "hidden": 64, "heads": 4})):
        torch.manual_seed(0)
        model = build_lm(f"hf-config:{name}", sizes, 300, 128).eval()
        save_lm(model, base / "tokenizer", base / name)
        found[name] = (model, base / name)
    return base, found


@pytest.fixture(scope="module")
def exported(folders):
    """{(arch, precision): folder}: the Llama at fp32, int8 and int4 (one child process), the GPT-2 at fp32; and
    openvino-genai's own greedy tokens of PROMPTS for both fp32 folders (one child process)."""
    base, found = folders
    made = {}
    for arch, precisions in (("llama", ("fp32", "int8", "int4")), ("gpt2", ("fp32",))):
        outs = {precision: base / f"{arch}-{precision}" for precision in precisions}
        export_openvino(found[arch][1], outs, group_size=32)
        made.update({(arch, precision): out for precision, out in outs.items()})
    genai = dict(zip(("llama", "gpt2"), genai_greedy([made["llama", "fp32"], made["gpt2", "fp32"]], PROMPTS, 8)))
    return made, genai


def torch_greedy(model, prompt, new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_fp32_folder_decodes_what_torch_decodes_by_both_loops(folders, exported, arch):
    _, found = folders
    made, genai_tokens = exported
    model = found[arch][0]
    out = made[arch, "fp32"]
    assert {"openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json",
            "tokenizer.json"} <= {p.name for p in out.iterdir()}
    generator = open_generator(out)
    assert isinstance(generator, OpenVINOGenerator)
    generator.eos_ids = ()  # random weights: compare whole runs, not where an eos happens to fall
    expected = [torch_greedy(model, p, 8) for p in PROMPTS]
    assert [generator.generate(p, 8) for p in PROMPTS] == expected
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([PROMPTS[0]])).logits[0].numpy()
    assert np.abs(generator.prefill_logits(PROMPTS[0]) - reference).max() < 1e-4
    rows = [PROMPTS[0], PROMPTS[1][:4]]  # a batch of one length: the cache rows stay apart
    assert generator.generate_batch(rows, 4) == [torch_greedy(model, r, 4) for r in rows]
    genai = genai_tokens[arch]  # openvino-genai stops at the folder's eos; up to there, the same tokens
    assert [g[:len(e)] for g, e in zip(genai, expected)] == [e[:len(g)] for g, e in zip(genai, expected)]
    assert all(len(g) >= 1 for g in genai)


def test_compressed_folders_are_smaller_and_run(exported):
    made, _ = exported
    sizes = {}
    for precision in ("fp32", "int8", "int4"):
        out = made["llama", precision]
        sizes[precision] = (out / "openvino_model.bin").stat().st_size
        generator = open_generator(out)
        assert len(generator.generate(PROMPTS[0], 4)) >= 1
        assert np.isfinite(generator.prefill_logits(PROMPTS[0])).all()
    assert sizes["int4"] < sizes["int8"] < 0.6 * sizes["fp32"]


@pytest.mark.slow
def test_a_width_pruned_student_runs_on_openvino_built_checked_benchmarked_and_deployed(tmp_path):
    """One run for two capabilities (CI time): Minitron width pruning of the teacher in all three widths (heads by
    KV group, MLP and hidden channels) starts the student; its onnxruntime-genai and OpenVINO folders (head_dim no
    longer hidden / heads) match torch, are benchmarked, reported, and the OpenVINO one deployed."""
    from test_lm_pipeline import lm_config

    device = tmp_path / "device"
    config = lm_config(**{"student": None,
                          "stages.prune": {"heads": 2, "intermediate": 64, "hidden": 48, "calibration_blocks": 4},
                          "stages.build.targets": ["onnxruntime:fp32", "openvino:fp32", "openvino:int4"],
                          "stages.benchmark.memory": False, "stages.benchmark.batch_sizes": [1],
                          "stages.deploy": {"targets": [f"local:{device}"], "rounds": 1,
                                            "artifact": "student-openvino-fp32"}})
    config["stages"].pop("baseline")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    prune = record["prune"]["outputs"]
    assert prune["width"]["before"] == {"heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 192, "hidden": 64}
    assert prune["width"]["after"] == {"heads": 2, "kv_heads": 1, "head_dim": 16, "intermediate": 64, "hidden": 48}
    assert prune["kept_layers"] == [0, 1] and prune["params"] < prune["teacher_params"]
    assert record["distill"]["outputs"]["params"] == prune["params"]
    exported = record["export"]["outputs"]["engines"]["student-onnxruntime-fp32"]["parity"]
    assert exported["max_abs_diff"] < 1e-3 and exported["identical_prompts"] == exported["prompts"] == 2
    engines = record["build"]["outputs"]["engines"]
    fp32 = engines["student-openvino-fp32"]["parity"]
    assert fp32["identical_prompts"] == fp32["prompts"] == 2 and fp32["max_abs_diff"] < 1e-3
    assert fp32["genai_identical_prompts"] == 2
    assert engines["student-openvino-int4"]["size_mb"] < engines["student-openvino-fp32"]["size_mb"]
    results = json.loads((tmp_path / "run" / "stages/benchmark/results.json").read_text())
    rows = {r["artifact"]: r for r in results["rows"]}
    assert rows["student-openvino-int4"]["backend"] == "openvino"
    assert rows["student-openvino-fp32"]["perplexity"] == pytest.approx(rows["distill-torch"]["perplexity"], rel=1e-3)
    assert rows["student-openvino-int4"]["decode_tokens_per_s"]["1"] > 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "student-openvino-int4" in report and "Each against the fp32 engine of its runtime" in report
    assert "heads 4 -> 2 per layer" in report and "intermediate 192 -> 64 per layer" in report
    assert "hidden 64 -> 48" in report
    assert record["deploy"]["status"] == "done", record["deploy"]
    assert (device / "current" / "model" / "openvino_model.xml").is_file()
    (deployed,) = record["deploy"]["outputs"]["deployed"]
    assert deployed["agreement_with_host"] == 1.0  # the device's tokens are the host's: it switched
    results = json.loads((tmp_path / "run" / deployed["results"]).read_text())
    # the device has openvino-genai (this venv): its LLMPipeline decoded the host's very tokens
    assert results["runtime"] == "openvino" and results["rows"][0]["backend"] == "openvino-genai"
    assert results["rows"][0]["accuracy"]["agreement_with_host"] == 1.0


GENERATORS_FREED_IN_ORDER = textwrap.dedent("""
    import faulthandler, gc, signal, subprocess, sys
    faulthandler.enable()  # as under pytest: Python's handlers run on the alternate signal stack
    from deploy.runner.ov_generation import OpenVINOGenerator

    first, second = OpenVINOGenerator(sys.argv[1]), OpenVINOGenerator(sys.argv[1])
    first.generate([5, 17], 2), second.generate([5, 17], 2)
    del first
    gc.collect()
    del second  # freed in the order made: with a Core each, the thread was left on an unmapped signal stack
    gc.collect()
    signal.signal(signal.SIGCHLD, lambda *args: None)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print("signals still arrive")
""")


def test_generators_freed_in_any_order_leave_signals_deliverable(exported):
    """An OpenVINOGenerator compiles on the process's one Core (deploy.runner.sessions.openvino_core): with a Core
    of its own, the full suite died with SIGSEGV when a later test's child process exited."""
    made, _ = exported
    done = subprocess.run([sys.executable, "-c", GENERATORS_FREED_IN_ORDER, str(made["llama", "fp32"])], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "signals still arrive" in done.stdout


ON_THE_DEVICE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, "deploy/runner")  # flat modules, as in a release on the device
    import lm_device, ov_generation, runner

    folders = json.loads(sys.argv[1])
    prompts = json.loads(sys.argv[2])
    found = {}
    for name, folder in folders.items():
        release, manifest = Path(folder).parent, {"model_folder": Path(folder).name}
        theirs = lm_device.open_generator(release, manifest)
        ours = lm_device.open_generator(release, manifest, backend="openvino")
        theirs.eos_ids = ours.eos_ids = ()  # random weights: whole runs, not where an eos happens to fall
        tokens, start, times = theirs.token_times(prompts[0], 8)
        stop = tokens[2]  # a stop id the third token is: both end there, the stop kept
        found[name] = {"backend": theirs.backend, "own": ours.backend, "tokens": tokens,
                       "same": [theirs.generate(p, 8) == ours.generate(p, 8) for p in prompts],
                       "stopped": [theirs.generate(prompts[0], 8, eos_id=stop), ours.generate(prompts[0], 8, eos_id=stop)],
                       "ordered": start <= times[0] and times == sorted(times)}
        try:
            lm_device.open_generator(release, manifest, backend="genai")
        except runner.RunnerError as error:
            found[name]["refused"] = str(error)
    sys.modules["openvino_genai"] = None  # a device without openvino-genai: the loop over the stateful model
    release, manifest = Path(folder).parent, {"model_folder": Path(folder).name}
    found["fallback"] = lm_device.open_generator(release, manifest).backend
    print(json.dumps(found))
""")


def test_on_the_device_openvino_genai_decodes_the_loops_tokens_and_stops_after_the_stop_id(exported):
    """A device with openvino-genai runs an OpenVINO release by its LLMPipeline (SDPA attention, f32: the host's
    execution): the tokens of the toolchain's loop at every precision, the stop id kept; without openvino-genai,
    the loop. In a child process, with the runner's modules imported flat, as on the device."""
    made, _ = exported
    folders = {f"{arch}-{precision}": str(folder) for (arch, precision), folder in made.items()}
    done = subprocess.run([sys.executable, "-c", ON_THE_DEVICE, json.dumps(folders), json.dumps(PROMPTS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    found = json.loads(done.stdout.splitlines()[-1])
    assert found.pop("fallback") == "openvino"
    assert set(found) == {"llama-fp32", "llama-int8", "llama-int4", "gpt2-fp32"}
    for name, one in found.items():
        assert (one["backend"], one["own"]) == ("openvino-genai", "openvino"), name
        assert len(one["tokens"]) == 8 and one["same"] == [True, True], name
        stop = one["tokens"][2]
        assert one["stopped"] == [one["tokens"][:one["tokens"].index(stop) + 1]] * 2, name
        assert one["ordered"], name
        assert one["refused"] == ("--backend genai: this release ships an OpenVINO IR folder; one of auto, "
                                  "openvino-genai, openvino"), name
