"""Release steps on a device: probe, upload, verify, (build engine), smoke, benchmark, switch.

A release is uploaded under `releases/.incoming-<version>`, checked and measured there, then
checked again, renamed to `releases/<version>` and `current` is switched with one symlink rename,
in one device step. A failure at any step discards the upload; `current` only ever changes in that
last rename. The whole sequence holds the device folder's deploy lock (see deploy/runner/releases.py),
so two deploys to one device never interleave, and the releases beyond the newest `keep` are pruned.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from compress.core.errors import CompressError, UsageError
from compress.core.fileio import read_json, sha256_file, write_json
from deploy.bundle import Bundle
from deploy.runner.releases import INCOMING_PREFIX
from deploy.targets import DeviceError, Target

Log = Callable[[str], None]


def probe(target: Target, runtime: str, text: bool = False, generation: bool = False) -> dict[str, Any]:
    """Connect and ask the device what it is; refuse one that cannot run `runtime` (nothing changed yet),
    or, for a text model (`text`), one without `tokenizers`, which tokenises raw texts there; for a causal LM
    (`generation`), one with neither `tokenizers` nor onnxruntime-genai, one of which turns prompts into tokens."""
    args = ["--sysroot", target.sysroot] if target.sysroot else []
    info = target.runner("probe", *args, timeout=120)
    llm_engine = generation and runtime == "tensorrt"  # TensorRT-LLM builds it, not trtexec
    target.check_device(info, "tensorrt-llm" if llm_engine else runtime)
    if llm_engine and not info.get("tensorrt_llm"):
        raise UsageError(f"{target.label}: tensorrt_llm is not installed for {target.python} on the device, so no "
                         "TensorRT-LLM engine can be built there (JetPack 6: NVIDIA's TensorRT-LLM wheel for Jetson); "
                         "deploy with --runtime onnxruntime")
    if text and not info.get("tokenizers"):
        raise UsageError(f"{target.label}: tokenizers is not installed for {target.python} on the device (pip install "
                         "tokenizers; \"tokenizers<0.21\" on Python 3.8): it tokenises a text model's raw inputs")
    if generation and not (info.get("tokenizers") or info.get("onnxruntime_genai")):
        raise UsageError(f"{target.label}: neither tokenizers nor onnxruntime-genai is installed for {target.python} on "
                         "the device (pip install tokenizers; \"tokenizers<0.21\" on Python 3.8): `runner.py generate` "
                         "turns prompts into tokens with one of them")
    return info


class StepTimer:
    """Seconds per deploy step, for the device's results."""

    def __init__(self):
        self.started, self.seconds = time.perf_counter(), {}

    def __call__(self, name: str, work: Callable[[], Any]) -> Any:
        begin = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - begin, 3)
        return result


def deploy_bundle(target: Target, bundle: Bundle, device: dict[str, Any], log: Log,
                  bwlimit_kbps: int | None = None, keep: int | None = None) -> dict[str, Any]:
    """Lock the device folder, then upload, verify, build, smoke-test, benchmark, check again and switch."""
    manifest, step, token = bundle.manifest, StepTimer(), uuid.uuid4().hex
    lock = step("prepare", lambda: target.hold("prepare", target.root, token))
    if lock.answer.get("removed_stale"):
        log(f"removed upload(s) of deploys that no longer run: {', '.join(lock.answer['removed_stale'])}")
    try:
        engine, measured, switched = ship(target, bundle, log, step, token, bwlimit_kbps, keep)
    finally:
        lock.end()
    if switched.get("pruned"):
        log(f"removed {len(switched['pruned'])} old release(s), keeping the newest {keep}: "
            f"{', '.join(switched['pruned'])}")
    if switched.get("warning"):
        log(f"warning: {switched['warning']}")
    return {"target": target.label, "target_url": target.spec, "device": device, "release": bundle.version, "previous": switched.get("previous"),
            "artifact": manifest["artifact"], "runtime": manifest["runtime"], "precision": manifest["precision"],
            "engine_build": engine, "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - step.started, 3), "step_seconds": step.seconds,
            "current": bundle.version, "rows": measured["rows"], "pruned": switched.get("pruned", [])}


def ship(target: Target, bundle: Bundle, log: Log, step: StepTimer, token: str, bwlimit_kbps: int | None,
         keep: int | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The steps inside the deploy lock `token`: (engine build, benchmark, switch); any failure discards the upload."""
    manifest = bundle.manifest
    incoming = INCOMING_PREFIX + bundle.version
    remote = f"{target.releases_dir()}/{incoming}"
    digest = sha256_file(bundle.directory / "manifest.json")
    try:
        log(f"upload {bundle.version} to {remote}")
        step("upload", lambda: target.upload(bundle.directory, remote, bwlimit_kbps))
        step("verify", lambda: target.runner("verify", remote, "--manifest-sha256", digest))
        engine = None
        if manifest["runtime"] == "tensorrt":
            log(f"building the TensorRT {manifest['precision']} engine on the device with "
                f"{'TensorRT-LLM' if manifest.get('generation') else 'trtexec'}")
            engine = step("build_engine", lambda: target.runner("build-engine", remote, timeout=3600))
        smoke = step("smoke", lambda: target.runner("smoke", remote))
        tokenized = (smoke.get("tokenization") or {}).get("texts")
        log(f"smoke inference ok ({', '.join(smoke.get('providers') or [])})"
            + (f"; the device tokenises the {tokenized} val texts as the host did" if tokenized else "")
            + (f"; {greedy_line(smoke['generation'])}" if smoke.get("generation") else "")
            + "; benchmarking on the device")
        measured = step("bench", lambda: target.runner("bench", remote, timeout=3600))
        refuse_disagreement(target, manifest, measured)
        # Every file is checked again in the step that switches: nothing changed since verify goes live.
        switch = ["activate", target.root, incoming, bundle.version, "--token", token, "--manifest-sha256", digest]
        switched = step("switch", lambda: target.runner(*switch, *(["--keep", str(keep)] if keep else [])))
    except BaseException:
        try:
            target.runner("discard", target.root, incoming, "--token", token, timeout=60)
        except Exception:
            pass
        raise
    return engine, measured, switched


def refuse_disagreement(target: Target, manifest: dict[str, Any], measured: dict[str, Any]) -> None:
    """An engine that predicts otherwise than the host did on the shipped val sample is not switched to (a causal
    LM's: whose greedy tokens agree with the host's on fewer positions of the shipped prompts than it asks)."""
    limit = manifest.get("min_agreement")
    rows = measured.get("rows") or [{}]
    agreement = (rows[0].get("accuracy") or {}).get("agreement_with_host")
    if limit is not None and agreement is not None and agreement < limit:
        on = rows[0].get("agreement_on", "the val sample")
        why = (manifest.get("generation") or {}).get("agreement_from", "gates.min_engine_agreement")
        raise DeviceError(f"{target.label}: {manifest['artifact']} agrees with the host's predictions on "
                          f"{agreement:.2%} of {on}, below {limit:.2%} ({why}): not switched; the current release stays")


def greedy_line(check: dict[str, Any]) -> str:
    """What the device's greedy check of a causal LM found, in words."""
    return (f"greedy tokens agree with the host's on {check['agreement']:.2%} of positions "
            f"({check['identical_prompts']}/{check['prompts']} prompts identical; required {check['min_agreement']:.2%}"
            f"{': ' + check['agreement_from'] if check.get('agreement_from') else ''})")


def in_parallel(targets: list[Target], work: Callable[[Target], Any]) -> list[tuple[Target, Any, BaseException | None]]:
    """Run `work` on every target at once; keep each result or error beside its target."""
    def guarded(target: Target):
        try:
            return target, work(target), None
        except Exception as error:  # reported per target in the summary
            return target, None, error

    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return list(pool.map(guarded, targets))


def summary_line(results: dict[str, Any]) -> str:
    first = results["rows"][0] if results["rows"] else None
    text = f"release {results['release']}, {results['artifact']} on {results['runtime']}"
    if first and first.get("timer") == "time_generation":  # a causal LM: tokens/s and the greedy check
        accuracy = first["accuracy"]
        rate = first.get("tokens_per_s")
        return (text + f" ({first['backend']}), {'-' if rate is None else format(rate, ',.1f')} tokens/s at batch 1 "
                f"({first['new_tokens']} new tokens), greedy tokens agree with the host's on "
                f"{accuracy['agreement_with_host']:.2%} ({accuracy['identical_prompts']}/{accuracy['prompts']} prompts "
                "identical)")
    if first and first.get("end_to_end") is not None:  # a detector: its boxes against the host's, file to boxes
        accuracy = first["accuracy"]
        return (text + f", b{first['batch_size']} p50 {first['latency_ms']['p50']:.3f} ms, "
                f"{first['end_to_end']['p50_ms']:.2f} ms file to boxes, boxes agree with the host's on "
                f"{accuracy['agreement_with_host']:.2%} of {accuracy['images']} sample images")
    if first:
        top1 = first["accuracy"].get("top1")
        text += f", b{first['batch_size']} p50 {first['latency_ms']['p50']:.3f} ms"
        if first.get("tokens_per_s"):
            text += f" ({first['tokens_per_s']:,.0f} tokens/s at length {first['sequence_length']})"
        samples = first["accuracy"].get("samples")
        text += f", top-1 {'-' if top1 is None else format(top1, '.4f')}"
        text += f" on {samples} val samples" if top1 is not None and samples else ""
    return text


def save_results(run_dir: Path, target: Target, results: dict[str, Any]) -> Path:
    path = run_dir / "stages" / "deploy" / target.slug / "results.json"
    write_json(path, results)
    return path


def note_current(run_dir: Path, target: Target, version: str) -> bool:
    """Record in the device's results which release is current after a rollback."""
    path = run_dir / "stages" / "deploy" / target.slug / "results.json"
    if not path.is_file():
        return False
    results = read_json(path)
    results["current"] = version
    write_json(path, results)
    return True


def refuse_usage_errors(outcomes: list[tuple[Target, Any, BaseException | None]]) -> None:
    for target, _, error in outcomes:
        if isinstance(error, UsageError):
            raise error
    for target, _, error in outcomes:
        if error is not None and not isinstance(error, CompressError):
            raise DeviceError(f"{target.label}: {type(error).__name__}: {error}") from error


def check_slugs(targets: list[Target]) -> None:
    seen: dict[str, str] = {}
    for target in targets:
        if target.slug in seen:
            raise UsageError(f"--target {target.label}: the same device folder as {seen[target.slug]}")
        seen[target.slug] = target.spec
