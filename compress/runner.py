"""Loads a pipeline and runs its stages in order with a content-keyed cache, resume and a run-dir lock.

Cache key of a stage = hash(stage name, its config, what else it depends on, the keys of the
stages it reads, the package version). A stage whose key is unchanged and whose outputs exist is
reused; one whose key changed starts from an empty folder; one with the same key that did not
finish keeps its folder, so training can resume from its checkpoints.
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

from compress import __version__, distributed
from compress.config import PipelineConfig, dump_config, parse_config, read_yaml
from compress.core.errors import CompressError, StageFailed, UsageError
from compress.core.fileio import DirLock, read_json, sha256_json, write_json, write_text
from compress.models import check_model_name
from compress.stages import STAGES, StageContext


def parse_pipeline(raw: Any, file: str = "pipeline.yaml", base: Path | None = None) -> PipelineConfig:
    """Validate a loaded pipeline document against the schema, the stages' own configs and the model zoo."""
    return parse_config(raw, file, base, stages=STAGES, check_model=check_model_name)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline.yaml; relative paths in it are relative to its folder."""
    path = Path(path)
    return parse_pipeline(read_yaml(path), str(path), path.parent.resolve())


class Runner:
    def __init__(self, pipeline: PipelineConfig, run_dir: Path, force: str | None = None,
                 log: Callable[[str], None] = print, debug: bool = False):
        self.pipeline = pipeline
        self.run_dir = Path(run_dir).resolve()
        self.log = log
        self.debug = debug
        self.stage_names = [name for name in STAGES if name in pipeline.stages or name == "teacher"]
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
            from compress.data import load_dataset

            self._dataset = load_dataset(self.pipeline.data, self.pipeline.seed)
        return self._dataset

    def stage_key(self, name: str, keys: dict[str, str]) -> str:
        stage = STAGES[name]()
        section = self.pipeline.stages.get(name)
        material = {
            "stage": name,
            "config": section.model_dump(mode="json") if section is not None else None,
            "depends": stage.key_material(self.pipeline),
            "upstream": {up: keys[up] for up in stage.reads if up in keys},
            "version": __version__,
        }
        return sha256_json(material)[:16]

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
        write_text(self.run_dir / "pipeline.yaml", yaml.safe_dump(dump_config(self.pipeline), sort_keys=False))
        record = read_json(self.run_json_path) if self.run_json_path.exists() else {}
        record.setdefault("stages", {})
        record["name"] = self.pipeline.name
        keys: dict[str, str] = {}
        outputs: dict[str, dict[str, Any]] = {}
        forced = False
        for name in self.stage_names:
            forced = forced or name == self.force
            key = self.stage_key(name, keys)
            keys[name] = key
            previous = record["stages"].get(name, {})
            stage_dir = self.run_dir / "stages" / name
            if not forced and previous.get("status") == "done" and previous.get("key") == key \
                    and self._outputs_exist(previous.get("outputs", {})):
                self.log(f"[{name}] cached (key {key})")
                outputs[name] = previous["outputs"]
                self.peers.send("cached", name, outputs[name])
                continue
            if (previous.get("key") != key or forced) and not STAGES[name].keeps_dir:
                shutil.rmtree(stage_dir, ignore_errors=True)
            stage_dir.mkdir(parents=True, exist_ok=True)
            self.peers.send("run", name)
            outputs[name] = self._run_stage(name, key, stage_dir, outputs, record)
            self.peers.send("done", name, outputs[name])
        for stale in set(record["stages"]) - set(self.stage_names):
            record["stages"].pop(stale)
        write_json(self.run_json_path, record)
        return record

    def _run_stage(self, name: str, key: str, stage_dir: Path, outputs: dict, record: dict) -> dict[str, Any]:
        entry = {"key": key, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        record["stages"][name] = entry
        write_json(self.run_json_path, record)
        self.log(f"[{name}] running (key {key})")
        ctx = StageContext(
            name=name, pipeline=self.pipeline, config=self.pipeline.stages.get(name), run_dir=self.run_dir,
            stage_dir=stage_dir, outputs=outputs, log=lambda msg: self.log(f"[{name}] {msg}"),
            _dataset_loader=self._load_dataset,
        )
        started = time.perf_counter()
        try:
            produced = STAGES[name]().run(ctx) or {}
        except BaseException as error:
            entry.update(status="failed", seconds=round(time.perf_counter() - started, 3),
                         error=str(error).splitlines()[0] if str(error) else type(error).__name__)
            write_json(self.run_json_path, record)
            write_json(stage_dir / "stage.json", {"name": name, **entry})
            self.peers.send("failed", name, entry["error"])
            if isinstance(error, (CompressError, KeyboardInterrupt)):
                raise
            if self.debug:
                traceback.print_exc()
            raise StageFailed(name, f"{type(error).__name__}: {error}") from error
        entry.update(status="done", seconds=round(time.perf_counter() - started, 3), outputs=produced)
        write_json(stage_dir / "stage.json", {"name": name, **entry})
        write_json(self.run_json_path, record)
        self.log(f"[{name}] done in {entry['seconds']:.1f}s")
        return produced

    def runs_on_every_rank(self, name: str) -> bool:
        """Whether stage `name` trains on every torchrun rank (the others run on rank 0 alone)."""
        return STAGES[name].distributed

    def run_stage_as_follower(self, name: str, outputs: dict) -> None:
        """A non-zero torchrun rank's share of a distributed stage: train, write nothing."""
        ctx = StageContext(
            name=name, pipeline=self.pipeline, config=self.pipeline.stages.get(name), run_dir=self.run_dir,
            stage_dir=self.run_dir / "stages" / name, outputs=outputs, log=lambda msg: None,
            _dataset_loader=self._load_dataset,
        )
        STAGES[name]().run(ctx)

    def _outputs_exist(self, produced: dict[str, Any]) -> bool:
        """Every output that names a file of the run dir must still be there."""
        for value in produced.values():
            if isinstance(value, str) and value.startswith("stages/") and not (self.run_dir / value).exists():
                return False
        return True
