"""Loads a pipeline and runs its stages in order with a content-keyed cache, resume and a run-dir lock.

Cache key of a stage = hash(stage name, its config, what else it depends on, the keys of the
stages it reads, the package version). A stage whose key is unchanged and whose outputs exist is
reused; one whose key changed starts from an empty folder; one with the same key that did not
finish keeps its folder, so training can resume from its checkpoints.

A run that fails loses nothing finished. Before anything is written, the inputs of the stages about
to run are checked (the data loads, the models build). A stage whose folder holds earlier work
builds into a fresh folder beside it, `stages/.<name>.new`, which takes the old one's place only
when the stage succeeds; its outputs name the final place. A failed attempt stays there, to be
resumed by a run of the same key.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import yaml

from compress import __version__, distributed
from compress.config import KEY_DUMP, PipelineConfig, dump_config, parse_config, read_yaml
from compress.core.errors import CompressError, ConfigError, StageFailed, UsageError
from compress.core.fileio import DirLock, ensure_writable_dir, read_json, sha256_json, write_json, write_text
from compress.data.fingerprint import fingerprint
from compress.models import build_model, check_model_name
from compress.stages import StageContext, stages_of
from compress.stages.teacher import check_models
from compress.tasks.registry import TASKS, task_for

# Stages that read only other stages' files: the data need not load before them.
READS_NO_DATA = frozenset({"report", "deploy"})
# Stages whose result the data files cannot change but through the stages they read (the deploy stage
# ships a val sample of the data, so its key sees the files).
READS_NO_FILES = frozenset({"report"})


class Step(NamedTuple):
    """One stage of a run as planned before it starts: its key, and the finished entry it reuses (or None)."""

    name: str
    key: str
    forced: bool
    reused: dict[str, Any] | None


def parse_pipeline(raw: Any, file: str = "pipeline.yaml", base: Path | None = None) -> PipelineConfig:
    """Validate a loaded pipeline document against the schema, the stages' own configs and the models
    (names, kwargs, channels, the teacher checkpoint: see compress.stages.teacher.check_models)."""
    cfg = parse_config(raw, file, base, stages=stages_of, tasks=TASKS, check_model=check_model_name)
    check_models(cfg)
    task_for(cfg).complete_config(cfg)
    return cfg


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline.yaml; relative paths in it are relative to its folder.

    The folder is also put at the end of the import path, so a `module:factory` beside pipeline.yaml
    imports as is (under torchrun every rank loads the pipeline, and so does the same); at the end,
    so it never shadows the toolchain or an installed package.
    """
    path = Path(path)
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.append(folder)
    return parse_pipeline(read_yaml(path), str(path), path.parent.resolve())


class Runner:
    def __init__(self, pipeline: PipelineConfig, run_dir: Path, force: str | None = None,
                 log: Callable[[str], None] = print, debug: bool = False):
        self.pipeline = pipeline
        self.run_dir = Path(run_dir).resolve()
        self.log = log
        self.debug = debug
        # A task may run stages of its own (a causal LM trains and builds engines unlike a classifier).
        self.stages = stages_of(pipeline.task_name)
        self.stage_names = [name for name in self.stages if name in pipeline.stages or name == "teacher"]
        if force is not None and force not in self.stage_names:
            raise UsageError(f"--force: no stage '{force}' in this pipeline; stages: {', '.join(self.stage_names)}")
        self.force = force
        self._dataset = None
        self.peers = distributed.Peers(False)

    @property
    def run_json_path(self) -> Path:
        return self.run_dir / "run.json"

    def _load_dataset(self):
        if self._dataset is None:
            task = task_for(self.pipeline)
            self._dataset = task.load_data(self.pipeline.seed)
            if distributed.rank() == 0:
                for line in task.describe_data(self._dataset):
                    self.log(f"[data] {line}")
        return self._dataset

    def stage_key(self, name: str, keys: dict[str, str]) -> str:
        stage = self.stages[name]()
        section = self.pipeline.stages.get(name)
        material = {
            "stage": name,
            "config": section.model_dump(**KEY_DUMP) if section is not None else None,
            "depends": stage.key_material(self.pipeline),
            "upstream": {up: keys[up] for up in stage.reads_in(self.pipeline) if up in keys},
            "version": __version__,
        }
        if name not in READS_NO_FILES and self.data_fingerprint is not None:  # files added or replaced rerun it
            material["data_files"] = self.data_fingerprint["sha256"]
        return sha256_json(material)[:16]

    @functools.cached_property
    def data_fingerprint(self) -> dict[str, Any] | None:
        """The data files' fingerprint (names, sizes, mtimes), taken once per run; None without files."""
        return fingerprint(self.pipeline.data)

    def run(self) -> dict[str, Any]:
        # Under torchrun only rank 0 takes the lock and writes run.json; the other ranks follow it
        # (compress/distributed.py) and train alongside it in the distributed stages.
        if not distributed.init_from_env():
            return self._run_as_leader()
        try:
            if distributed.rank() != 0:
                return distributed.follow(self)
            self.peers = distributed.Peers(True)
            return self._run_as_leader()
        finally:
            distributed.shutdown()

    def _run_as_leader(self) -> dict[str, Any]:
        try:
            ensure_writable_dir(self.run_dir)
        except UsageError as error:
            self.peers.send("failed", "run dir", str(error))
            raise
        lock = DirLock(self.run_dir)
        if not lock.acquire():
            message = f"{self.run_dir}: another run (pid {lock.holder()}) is writing this run dir"
            self.peers.send("failed", "lock", message)
            raise UsageError(message)
        try:
            record = self._run_locked()
            self.peers.send("end")
            return record
        finally:
            lock.release()

    def _run_locked(self) -> dict[str, Any]:
        record = read_json(self.run_json_path) if self.run_json_path.exists() else {}
        record.setdefault("stages", {})
        steps = self._plan(record)
        self._check_inputs([step.name for step in steps if step.reused is None])
        write_text(self.run_dir / "pipeline.yaml", yaml.safe_dump(dump_config(self.pipeline), sort_keys=False))
        record["name"] = self.pipeline.name
        outputs: dict[str, dict[str, Any]] = {}
        for step in steps:
            name = step.name
            if step.reused is not None:
                self.log(f"[{name}] cached (key {step.key})")
                record["stages"][name] = step.reused
                outputs[name] = step.reused.get("outputs", {})
                shutil.rmtree(self._folders(name)[1], ignore_errors=True)  # an attempt no record can resume
                self.peers.send("cached", name, outputs[name])
                continue
            stage_dir = self._build_dir(step, record["stages"].get(name, {}))
            self.peers.send("run", name)
            outputs[name] = self._run_stage(name, step.key, stage_dir, outputs, record)
            self.peers.send("done", name, outputs[name])
        for stale in set(record["stages"]) - set(self.stage_names):
            record["stages"].pop(stale)
        write_json(self.run_json_path, record)
        return record

    def _plan(self, record: dict[str, Any]) -> list[Step]:
        """Every stage's key and whether it is reused, known before any stage runs (keys need no outputs)."""
        keys: dict[str, str] = {}
        steps: list[Step] = []
        forced = False
        for name in self.stage_names:
            forced = forced or name == self.force
            keys[name] = self.stage_key(name, keys)
            self._settle_swap(name)
            reused = None if forced else self._finished(name, keys[name], record["stages"].get(name, {}))
            steps.append(Step(name, keys[name], forced, reused))
        return steps

    def _finished(self, name: str, key: str, previous: dict[str, Any]) -> dict[str, Any] | None:
        """The finished entry of this key whose outputs are all there: run.json's, else the stage folder's own
        stage.json (a failed attempt of another key replaced the entry in run.json, not the folder)."""
        for entry in (previous, self._folder_entry(name)):
            if entry.get("status") == "done" and entry.get("key") == key \
                    and self._outputs_exist(entry.get("outputs", {})):
                return entry
        return None

    def _folder_entry(self, name: str) -> dict[str, Any]:
        try:
            entry = read_json(self._folders(name)[0] / "stage.json")
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in entry.items() if k != "name"} if isinstance(entry, dict) else {}

    def _check_inputs(self, to_run: list[str]) -> None:
        """What the stages about to run would refuse halfway (the data, the models), refused before anything is
        written: a bad npz must not cost the teacher a retraining, nor a typo in student.kwargs."""
        if not set(to_run) - READS_NO_DATA:
            return
        try:
            data = self._load_dataset()
            roles = ["teacher"] if "teacher" in to_run and self.pipeline.teacher.checkpoint is None else []
            roles += ["student"] if {"baseline", "distill"} & set(to_run) else []
            for role in roles:
                self._check_model(role, data)
        except CompressError as error:
            self.peers.send("failed", to_run[0], str(error))
            raise
        except Exception:  # not a bad input: the stage meets it again, and records it as a failure of its own
            pass

    def _check_model(self, role: str, data) -> None:
        """Build the role's model for this data and drop it; the global RNG is left as it was."""
        cfg = getattr(self.pipeline, role)
        task = task_for(self.pipeline)
        if task.checks_models_itself:
            task.check_model(role, cfg, data)
            return
        try:
            with torch.random.fork_rng(devices=[]):
                build_model(task.model_spec(cfg, data))
        except ConfigError:
            raise
        except Exception as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            field = f"{role}.kwargs" if "keyword argument" in text or "kwargs" in text else f"{role}.model"
            shape = "x".join(str(n) for n in data.input_shape)
            raise ConfigError(self.pipeline.source_file, field, f"'{cfg.model}' cannot be built for this data "
                              f"({shape}, {data.num_classes} classes): {text}") from error

    def _folders(self, name: str) -> tuple[Path, Path, Path]:
        """(the stage's folder, the fresh one it builds into beside it, where the old one waits during a swap)."""
        root = self.run_dir / "stages"
        return root / name, root / f".{name}.new", root / f".{name}.old"

    def _build_dir(self, step: Step, previous: dict[str, Any]) -> Path:
        """Where the stage writes: an unfinished attempt of this key is resumed where it is; a fresh attempt builds
        beside a folder that is there (kept until the stage succeeds), else in the stage's own folder."""
        final, fresh, _ = self._folders(step.name)
        if self.stages[step.name].keeps_dir:
            target = final
        elif not step.forced and previous.get("key") == step.key and (fresh.is_dir() or final.is_dir()):
            target = fresh if fresh.is_dir() else final
        else:
            shutil.rmtree(fresh, ignore_errors=True)
            target = fresh if final.exists() else final
        target.mkdir(parents=True, exist_ok=True)
        return target

    def _install(self, name: str, built: Path) -> None:
        """Put a finished fresh folder in the stage's place; the old one is dropped only once it is out of the way."""
        final, _, old = self._folders(name)
        if built == final:
            return
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(built, final)
        shutil.rmtree(old, ignore_errors=True)

    def _settle_swap(self, name: str) -> None:
        """Finish a swap that a crash cut between its two renames: bring the old folder back, or drop it."""
        final, _, old = self._folders(name)
        if old.exists():
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)

    def _run_stage(self, name: str, key: str, stage_dir: Path, outputs: dict, record: dict) -> dict[str, Any]:
        entry = {"key": key, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        record["stages"][name] = entry
        write_json(self.run_json_path, record)
        self.log(f"[{name}] running (key {key})")
        final = self._folders(name)[0]
        built_as, final_as = str(stage_dir.relative_to(self.run_dir)), str(final.relative_to(self.run_dir))

        def at_final(text: str) -> str:
            """What the stage says of its files, said of the place they take when it succeeds."""
            return text.replace(built_as, final_as)

        ctx = StageContext(
            name=name, pipeline=self.pipeline, config=self.pipeline.stages.get(name), run_dir=self.run_dir,
            stage_dir=stage_dir, outputs=outputs, log=lambda msg: self.log(f"[{name}] {at_final(msg)}"),
            _dataset_loader=self._load_dataset,
        )
        started = time.perf_counter()
        try:
            with self._threads(name, ctx.log):
                produced = self.stages[name]().run(ctx) or {}
        except BaseException as error:
            entry.update(status="failed", seconds=round(time.perf_counter() - started, 3),
                         error=str(error).splitlines()[0] if str(error) else type(error).__name__)
            write_json(self.run_json_path, record)
            write_json(stage_dir / "stage.json", {"name": name, **entry})
            if stage_dir != final and final.exists():
                self.log(f"[{name}] {final_as} is kept as it was; this attempt stays in {built_as}")
            self.peers.send("failed", name, entry["error"])
            if isinstance(error, (CompressError, KeyboardInterrupt)):
                raise
            if self.debug:
                traceback.print_exc()
            raise StageFailed(name, f"{type(error).__name__}: {error}") from error
        produced = _map_strings(produced, at_final)
        entry.update(status="done", seconds=round(time.perf_counter() - started, 3), outputs=produced)
        write_json(stage_dir / "stage.json", {"name": name, **entry})
        self._install(name, stage_dir)
        write_json(self.run_json_path, record)
        self.log(f"[{name}] done in {entry['seconds']:.1f}s")
        return produced

    def runs_on_every_rank(self, name: str) -> bool:
        """Whether stage `name` trains on every torchrun rank (the others run on rank 0 alone)."""
        return self.stages[name].distributed

    def run_stage_as_follower(self, name: str, outputs: dict) -> None:
        """A non-zero torchrun rank's share of a distributed stage: train, write nothing.

        It trains in the folder rank 0 chose (`_build_dir`): the fresh one when rank 0 made one.
        """
        final, fresh, _ = self._folders(name)
        ctx = StageContext(
            name=name, pipeline=self.pipeline, config=self.pipeline.stages.get(name), run_dir=self.run_dir,
            stage_dir=fresh if fresh.is_dir() and not self.stages[name].keeps_dir else final, outputs=outputs,
            log=lambda msg: None,
            _dataset_loader=self._load_dataset,
        )
        with self._threads(name, ctx.log):
            self.stages[name]().run(ctx)

    @contextlib.contextmanager
    def _threads(self, name: str, log: Callable[[str], None]):
        """torch's intra-op threads while stage `name` runs: its own setting, else the pipeline's `threads`, else
        what the process has (torch's default, one per core); said in the log, and put back after.

        On cores other processes keep busy, torch's threads spin waiting for each other (a student
        epoch took 40 s instead of 2 s on 2 shared cores): `threads: 1` is the remedy. It is in no
        cache key: threads change how fast a stage runs, and at most the last bits of float sums (as
        OMP_NUM_THREADS, another CPU or another BLAS would, which no key sees either), so setting it
        on a finished run retrains nothing.
        """
        before = torch.get_num_threads()
        field, count = self.stages[name]().threads(self.pipeline) or \
            (("threads", self.pipeline.threads) if self.pipeline.threads else ("torch's default", before))
        torch.set_num_threads(count)
        if name not in READS_NO_DATA:  # the report and deploy read files; they compute nothing to speak of
            log(f"torch threads: {count} ({field})")
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _outputs_exist(self, produced: Any) -> bool:
        """Every output that names a file of the run dir must still be there, nested ones too (the build's
        engines are a list of entries, each naming its folder and artifact)."""
        if isinstance(produced, str):
            return not produced.startswith("stages/") or (self.run_dir / produced).exists()
        if isinstance(produced, dict):
            return all(self._outputs_exist(value) for value in produced.values())
        if isinstance(produced, (list, tuple)):
            return all(self._outputs_exist(value) for value in produced)
        return True


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` applied to every string in it (outputs are nested dicts and lists)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, change) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, change) for v in value]
    return value
