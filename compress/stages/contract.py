"""The stage contract: a typed config, the stages it reads, and `run(ctx) -> outputs`.

The runner, not the stage, owns caching, timing, logging, resume and errors. A stage writes only
into `ctx.stage_dir` and reads other stages only through `ctx.outputs[...]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel

from compress.config import PipelineConfig, Strict
from compress.tasks.task import Task
from compress.tasks.registry import task_for


class NoOptions(Strict):
    pass


@dataclass
class StageContext:
    name: str
    pipeline: PipelineConfig
    config: BaseModel
    run_dir: Path
    stage_dir: Path
    outputs: dict[str, dict[str, Any]]
    log: Callable[[str], None]
    _dataset_loader: Callable[[], Any] = field(repr=False, default=None)

    @property
    def data(self):
        """The pipeline's dataset, loaded once per run and shared by the stages."""
        return self._dataset_loader()

    @property
    def task(self) -> Task:
        """The pipeline's task: what a stage asks instead of testing which kind of model it serves."""
        return task_for(self.pipeline)

    def path(self, relative: str) -> Path:
        """An artifact path recorded by a stage (relative to the run dir) as an absolute path."""
        return self.run_dir / relative

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run_dir))

    def has(self, stage: str) -> bool:
        return stage in self.outputs


class Stage:
    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]] = NoOptions
    optional: ClassVar[bool] = False
    # Upstream stages whose outputs this stage reads; only those present in the pipeline count.
    reads: ClassVar[tuple[str, ...]] = ()
    # A stage whose folder also holds what other commands wrote (deploy: device results of
    # `compress deploy`) keeps it when it reruns; every other stage starts from an empty folder.
    keeps_dir: ClassVar[bool] = False
    # Under torchrun, a distributed stage runs on every rank (it trains with DDP); others on rank 0 only.
    distributed: ClassVar[bool] = False

    def reads_in(self, pipeline: PipelineConfig) -> tuple[str, ...]:
        """The upstream stages whose keys are part of this stage's key in `pipeline` (default: `reads`)."""
        return self.reads

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        """Everything outside the stage's own section that changes its result."""
        return {}

    def threads(self, pipeline: PipelineConfig) -> tuple[str, int] | None:
        """(the field that sets it, the count) of the stage's own torch intra-op threads; None: the pipeline's.

        Default: a `threads` option in its section (every training section has one).
        """
        count = getattr(pipeline.stages.get(self.name), "threads", None)
        return (f"stages.{self.name}.threads", count) if count else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError
