"""Text engines at realistic sizes: a BERT-base teacher, TinyBERT-4 and DistilBERT-6 students, every engine.

Random-weight models shaped like BERT-base (12 layers, hidden 768, 12 heads; the teacher), TinyBERT-4
(4 layers, hidden 312, 12 heads, intermediate 1200) and DistilBERT (6 layers, hidden 768, 12 heads),
vocabulary 30,522, 2 classes, built from transformers' configs (nothing downloaded; latency does not
depend on the weights), exported as the export stage does. Each student gets every backend x
precision this machine builds (`deploy/engines`, as `targets: auto`), int8 included as the build
makes it (ONNX Runtime: static Q/DQ or dynamic, chosen by measurement, deploy.engines.int8_choice),
plus the peer: `onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)` of the same fp32 ONNX,
what optimum and ORT users do for BERT on CPU by default. The teacher is timed in ONNX Runtime fp32.
All in one process, in interleaved rounds (deploy.runner.harness.measure_rounds), so the ratios
compare like with like; threads are set explicitly (default 1: the machine is shared).

The weights being random, the int8 build's accuracy budget is set to 0 here (near-equal random logits flip
on any rounding, so agreement says nothing of a trained model's): the build's choice among its int8 forms
goes by time alone; a pipeline applies its own budget. Biases and LayerNorm parameters are made non-zero,
as a trained model's are (the simplifier would drop an Add of zeros, and the graph would not be a real one).

Targets, checked in the same run: the best int8 artifact of each student >= 1.5x its fp32 at
sequence 128; no int8 artifact of the build slower than the peer (<= 1.0x its time); TinyBERT-4's
best artifact >= 9.4x faster than the teacher in ONNX Runtime fp32 at batch 1, sequence 128.

    python benchmarks/text_engines.py [--sequences 32,128,512] [--batches 1,8] [--rounds 3] [--threads 1]
                                      [--backends onnxruntime,openvino] [--json out.json]
    python benchmarks/text_engines.py --smoke   # tiny shapes, one round, temp dirs only: the same code paths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.exporting.torch_to_onnx import export_onnx_inputs, simplify_onnx  # noqa: E402
from compress.measuring.environment import cpu_name  # noqa: E402
from compress.models.text_models import build_hf_config  # noqa: E402
from deploy.engines import ENGINES, get_engine  # noqa: E402
from deploy.runner.harness import LatencySettings, cpu_features, measure_rounds  # noqa: E402
from deploy.runner.sessions import OnnxRuntimeSession  # noqa: E402

VOCAB = 30522
MODELS = {"teacher": ("bert", {"layers": 12, "hidden": 768, "heads": 12}),
          "tinybert4": ("bert", {"layers": 4, "hidden": 312, "heads": 12, "intermediate": 1200}),
          "distilbert6": ("distilbert", {"layers": 6, "hidden": 768, "heads": 12})}
SMOKE_MODELS = {"teacher": ("bert", {"layers": 2, "hidden": 32, "heads": 2}),
                "tinybert4": ("bert", {"layers": 1, "hidden": 16, "heads": 2}),
                "distilbert6": ("distilbert", {"layers": 1, "hidden": 16, "heads": 2})}
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TARGET_INT8_VS_FP32 = 1.5
TARGET_VS_PEER = 1.0
TARGET_TINY_VS_TEACHER = 9.4


def build_targets() -> list[tuple[str, str]]:
    """Every backend x precision built here, as `targets: auto` (TensorRT only where it and a GPU are)."""
    targets = []
    for backend, engine in ENGINES.items():
        if backend == "tensorrt":
            targets += [(backend, p) for p in ("fp32", "fp16")] if engine.missing() is None else []
        elif engine.available():
            targets += [(backend, p) for p in engine.precisions]
    return targets


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero biases and LayerNorm parameters, as any trained model has. A fresh model's are 0 and 1 and the
    export's simplifier drops an Add of zeros: its graph would lack the bias Adds a real one has (and which
    ONNX Runtime's fusions match on)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.02)
            elif "LayerNorm" in name or "layer_norm" in name:
                param.normal_(1.0, 0.02)
    return model


def export(name: str, arch: str, sizes: dict, vocab: int, work: Path) -> Path:
    """The model as the export stage writes it: named int64 inputs, dynamic batch and sequence, simplified."""
    torch.manual_seed(0)
    model = trained_like(build_hf_config(arch, vocab, 512, 2, sizes)).eval()
    names = TOKEN_INPUTS if arch == "bert" else TOKEN_INPUTS[:2]
    specs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in names]
    ids = torch.randint(5, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 14:] = 0  # padded positions keep the mask arithmetic in the traced graph
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    path = work / f"{name}.onnx"
    export_onnx_inputs(model, specs, example, path)
    simplify_onnx(path)
    return path


def token_rows(names: tuple[str, ...], count: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = {"input_ids": rng.integers(5, vocab, (count, length)), "attention_mask": np.ones((count, length)),
            "token_type_ids": np.zeros((count, length))}
    return {n: rows[n].astype(np.int64) for n in names}


class Inputs:
    """A session fed the BERT inputs that passes on only those its model takes (DistilBERT has no token types)."""

    def __init__(self, session):
        self.session = session
        self.names = list(session.input_names)

    def infer(self, x):
        return self.session.infer({n: x[n] for n in self.names})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.session.close()


def peer_dynamic(fp32: Path, path: Path) -> Path:
    """What users do by hand: quantize_dynamic with its defaults and int8 weights."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is for static calibration
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


def same_graph(a: Path, b: Path) -> bool:
    """Whether two ONNX files hold the same nodes (op types, in order) and the same initializer bytes."""
    import hashlib

    import onnx

    def content(path):
        graph = onnx.load(str(path)).graph
        weights = sorted(hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest() for t in graph.initializer)
        return [(n.op_type, n.domain) for n in graph.node], weights

    return content(a) == content(b)


def environment_line(threads: int) -> str:
    import onnxruntime
    import openvino

    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()} "
            f"({', '.join(cpu_features()) or 'no AVX2, AVX-512, VNNI or AMX'}), {os.cpu_count()} cores, {threads} "
            f"thread(s); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}")


def build_all(models: dict, args, work: Path) -> list[dict]:
    """Every artifact: (model, backend, precision, source, path, engine) with the build's int8 choice recorded."""
    artifacts = []
    calibration_length = 128 if 128 in args.sequences else max(args.sequences)
    for name, (arch, sizes) in models.items():
        fp32 = export(name, arch, sizes, args.vocab, work)
        names = TOKEN_INPUTS if arch == "bert" else TOKEN_INPUTS[:2]
        print(f"{name}: {fp32.stat().st_size / 1e6:.1f} MB fp32 ONNX", flush=True)
        targets = [("onnxruntime", "fp32")] if name == "teacher" else \
            [(b, p) for b, p in build_targets() if b in args.backends]
        for backend, precision in targets:
            out = work / f"{name}.{backend}.{precision}"
            # Random weights: top-1 agreement with fp32 says nothing of a trained model's (near-equal logits flip
            # on any rounding), so the int8 choice goes by time alone here; a pipeline applies its budget.
            options = {"sources": {"fp32": fp32}, "calibration": token_rows(names, args.calibration,
                                                                              calibration_length, args.vocab),
                       "threads": args.threads, "timing_batches": args.batches, "min_agreement": 0.0}
            if args.smoke:
                options["timing"] = {"rounds": 1}
            started = time.perf_counter()
            built = get_engine(backend).build(fp32, out, precision, **options)
            choice = (built.sidecar.get("quantization") or {}).get("choice")
            artifacts.append({"model": name, "backend": backend, "precision": precision, "source": "build",
                              "path": built.artifact, "engine": backend, "choice": choice,
                              "size_mb": artifact_mb(built.directory)})
            print(f"  {backend} {precision}: built in {time.perf_counter() - started:.1f}s"
                  + (f"; int8 chose {choice['chosen']}: {choice['why']}" if choice else ""), flush=True)
        if name != "teacher":
            peer = peer_dynamic(fp32, work / f"{name}.peer.onnx")
            for artifact in artifacts:
                if artifact["model"] == name and artifact["backend"] == "onnxruntime" and artifact["precision"] == "int8":
                    artifact["same_graph_as_peer"] = same_graph(artifact["path"], peer)
            artifacts.append({"model": name, "backend": "onnxruntime", "precision": "int8",
                              "source": "peer quantize_dynamic", "path": peer, "engine": "onnxruntime",
                              "choice": None, "size_mb": peer.stat().st_size / 1e6})
    return artifacts


def artifact_mb(directory: Path) -> float:
    """The artifact's files (an OpenVINO IR is model.xml + model.bin), its engine.json left out."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.name != "engine.json") / 1e6


def opener(artifact: dict, threads: int):
    if artifact["source"].startswith("peer"):
        return lambda: Inputs(OnnxRuntimeSession(artifact["path"], threads, providers=["CPUExecutionProvider"]))
    return lambda: Inputs(get_engine(artifact["engine"]).load(artifact["path"], threads))


def time_all(artifacts: list[dict], args, settings: LatencySettings) -> list[dict]:
    specs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"], **({"vocab_size": args.vocab}
              if n == "input_ids" else {})} for n in TOKEN_INPUTS]
    rows = []
    for length in args.sequences:
        ran = {}
        timed = measure_rounds([opener(a, args.threads) for a in artifacts], specs, args.batches, settings,
                               args.rounds, sequence_length=length,
                               on_first_load=lambda i, session: ran.setdefault(i, session.session.precision),
                               on_round=lambda r: print(f"sequence {length}: round {r + 1}/{args.rounds} done",
                                                        flush=True))
        for i, (artifact, by_batch) in enumerate(zip(artifacts, timed)):
            for row in by_batch:
                rows.append({**{k: v for k, v in artifact.items() if k not in ("path", "engine", "choice")},
                             "ran_as": ran.get(i),
                             "sequence_length": length, "batch_size": row["batch_size"],
                             "p50_ms": row["latency_ms"]["p50"], "spread_ms": row["latency_ms"]["p50_spread"],
                             "round_p50s": row["latency_ms"]["round_p50s"]})
    return rows


def speedup(slow: dict, fast: dict) -> tuple[float, float, float]:
    """How many times faster `fast` ran than `slow`: the median over rounds of the ratio within a round (both
    were timed in the same round, so load that came and went hits both), and the rounds' lowest and highest."""
    ratios = [a / b for a, b in zip(slow["round_p50s"], fast["round_p50s"])]
    return float(np.median(ratios)), min(ratios), max(ratios)


def ratio_text(value: tuple[float, float, float]) -> str:
    return f"{value[0]:.2f}x (rounds {value[1]:.2f}-{value[2]:.2f})"


def find(rows, **where) -> dict | None:
    return next((r for r in rows if all(r[k] == v for k, v in where.items())), None)


def label(row: dict) -> str:
    """backend precision, with what the CPU plugin computed in where that differs (bf16 on a CPU without it)."""
    ran = row.get("ran_as")
    differs = ran and row["precision"] != "int8" and ran != row["precision"]
    return (f"{row['backend']} {row['precision']}" + (f" (ran {ran})" if differs else "")
            + (" (peer)" if row["source"] != "build" else ""))


def print_table(rows: list[dict], args) -> None:
    print("\n| model | artifact | seq | p50 ms b" + " | p50 ms b".join(map(str, args.batches))
          + " | vs its fp32 b" + " | vs its fp32 b".join(map(str, args.batches)) + " | MB |")
    print("|---|---|---:|" + "---:|" * (2 * len(args.batches) + 1))
    for length in args.sequences:
        for r in (r for r in rows if r["sequence_length"] == length and r["batch_size"] == args.batches[0]):
            cells, ratios = [], []
            for batch in args.batches:
                row = find(rows, model=r["model"], backend=r["backend"], precision=r["precision"],
                           source=r["source"], sequence_length=length, batch_size=batch)
                fp32 = find(rows, model=r["model"], backend=r["backend"], precision="fp32", source="build",
                            sequence_length=length, batch_size=batch)
                cells.append(f"{row['p50_ms']:.2f} ±{row['spread_ms']:.2f}")
                ratios.append(f"{speedup(fp32, row)[0]:.2f}x" if fp32 else "")
            print(f"| {r['model']} | {label(r)} | {length} | {' | '.join(cells)} | {' | '.join(ratios)} | "
                  f"{r['size_mb']:.1f} |")


def targets(rows: list[dict], args) -> list[str]:
    """The target lines: each ratio (paired within rounds, see `speedup`) with its number, met or MISSED."""
    lines = []
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    main_length = 128 if 128 in args.sequences else args.sequences[0]
    for model in [m for m in dict.fromkeys(r["model"] for r in rows) if m != "teacher"]:
        for batch in args.batches:
            at = [r for r in rows if r["model"] == model and r["batch_size"] == batch
                  and r["sequence_length"] == main_length]
            best = min((r for r in at if r["precision"] == "int8" and r["source"] == "build"),
                       key=lambda r: r["p50_ms"])
            gain = speedup(find(at, backend=best["backend"], precision="fp32", source="build"), best)
            ort = speedup(find(at, backend="onnxruntime", precision="fp32", source="build"), best)
            lines.append(f"{model} b{batch} s{main_length}: best int8 ({label(best)}) {ratio_text(gain)} faster than "
                         f"its fp32, {ort[0]:.2f}x ONNX Runtime fp32 (target >= {TARGET_INT8_VS_FP32}x): "
                         f"{verdict(gain[0] >= TARGET_INT8_VS_FP32)}")
        for length in args.sequences:
            for batch in args.batches:
                at = [r for r in rows if r["model"] == model and r["batch_size"] == batch
                      and r["sequence_length"] == length]
                peer = find(at, source="peer quantize_dynamic")
                built = sorted((r for r in at if r["precision"] == "int8" and r["source"] == "build"),
                               key=lambda r: r["p50_ms"])
                time_ratio = [(label(r), speedup(r, peer)) for r in built]  # the artifact's time / the peer's
                others = ", ".join(f"{name} {ratio[0]:.2f}x" for name, ratio in time_ratio[1:])
                name, ratio = time_ratio[0]
                same = built[0].get("same_graph_as_peer")
                judged = ("the same graph as the peer (nodes and weights), so 1.00x but for noise" if same
                          else verdict(ratio[0] <= TARGET_VS_PEER))
                lines.append(f"{model} b{batch} s{length}: best int8 ({name}) takes {ratio_text(ratio)} the peer's "
                             f"time (target <= {TARGET_VS_PEER}x): {judged}"
                             + (f"; other int8 builds: {others}" if others else ""))
    teacher = find(rows, model="teacher", batch_size=1, sequence_length=main_length)
    tiny = [r for r in rows if r["model"] == "tinybert4" and r["batch_size"] == 1
            and r["sequence_length"] == main_length and r["source"] == "build"]
    if teacher and tiny:
        best = min(tiny, key=lambda r: r["p50_ms"])
        ratio = speedup(teacher, best)
        lines.append(f"tinybert4 b1 s{main_length}: best artifact ({label(best)}) {ratio_text(ratio)} faster than the "
                     f"teacher in ONNX Runtime fp32 (target >= {TARGET_TINY_VS_TEACHER}x): "
                     f"{verdict(ratio[0] >= TARGET_TINY_VS_TEACHER)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", default="32,128,512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per round (at least)")
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", default="onnxruntime,openvino,tensorrt",
                        help="the students' backends to build and time (the teacher is ONNX Runtime fp32)")
    parser.add_argument("--calibration", type=int, default=64, help="calibration rows for the static int8 builds")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round, a few seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.sequences = [int(s) for s in args.sequences.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.backends = args.backends.split(",")
    args.vocab = VOCAB
    settings = LatencySettings(warmup=2, warmup_seconds=0.2, runs=args.runs, min_seconds=args.min_seconds)
    models = MODELS
    if args.smoke:
        args.sequences, args.batches, args.rounds, args.vocab, args.calibration = [16], [1, 2], 1, 100, 8
        settings = LatencySettings(warmup=1, warmup_seconds=0.0, runs=1, min_seconds=0.0)
        models = SMOKE_MODELS
    torch.set_num_threads(args.threads)
    print(environment_line(args.threads), flush=True)
    work = Path(tempfile.mkdtemp(prefix="text-engines-"))
    started = time.perf_counter()
    try:
        artifacts = build_all(models, args, work)
        rows = time_all(artifacts, args, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args)
    lines = targets(rows, args)
    print("\n" + "\n".join(lines))
    choices = {a["model"]: a["choice"] for a in artifacts if a["choice"]}
    for model, choice in choices.items():
        print(f"{model}: the build's onnxruntime int8 ships {choice['chosen']}: {choice['why']}")
    print(f"\n{environment_line(args.threads)}; {time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"environment": environment_line(args.threads), "rows": rows,
                                         "targets": lines, "int8_choices": choices}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
