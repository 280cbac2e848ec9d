"""pipeline.yaml as pydantic models: the schema only.

Every error is reported as one line, `FILE: yaml.path.of.field: message`. Stage sections are
validated against the config model of each stage, handed in by the loader (compress.runner), so a
stage owns its own options and this module imports none of them.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

# stage configs import these from here
from compress.config.base import ADDED_LATER, KEY_DUMP, NOT_IN_KEY, Strict  # noqa: F401
from compress.config.data import AugmentConfig, DataConfig, TextConfig, TransferConfig  # noqa: F401
from compress.core.errors import ConfigError
from deploy.runner.harness import ENGINE_AGREEMENT, engine_agreement


# Beyond any training budget of this tool: more epochs than this is a typo (an extra zero or two), not a plan.
MAX_EPOCHS = 10_000


def _fraction_of_top1(drop: float) -> float:
    """A top-1 drop of 1 or more would let any model pass: it is points written where a fraction is meant."""
    if drop >= 1:
        raise ValueError(f"{drop:g} is not a fraction: a top-1 drop is a fraction below 1 (0.02 = 2 points; "
                         f"for {drop:g} points write {drop / 100:g})")
    return drop


# A top-1 accuracy drop (gates, accuracy control): a fraction, 0.02 = 2 points.
TopOneDrop = Annotated[float, AfterValidator(_fraction_of_top1)]


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    # Training options of compress.distill.train.fit (teacher, baseline and distill share them).
    warmup_epochs: float = Field(0.0, ge=0, description="linear LR warm-up before the schedule")
    lr_steps: list[int] = Field(default_factory=list, description="step schedule: epochs where lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm")
    amp: bool = Field(False, description="bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA")
    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels")
    flip: bool = Field(False, description="random horizontal flip")
    progress: bool = Field(True, description="a progress bar per epoch when the console is a terminal")
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY,
                                description="torch intra-op threads while this stage trains and evaluates "
                                            "(default: the pipeline's threads, else torch's)")

    @field_validator("epochs")
    @classmethod
    def _sane_budget(cls, epochs: int) -> int:
        """Also holds in subclasses that redefine `epochs` (distill, quantize): validators are inherited."""
        if epochs > MAX_EPOCHS:
            raise ValueError(f"{epochs} epochs is beyond any training budget (at most {MAX_EPOCHS:,}); a typo?")
        return epochs


class ModelConfig(Strict):
    model: str = Field(description="built-in name, timm:NAME, hf:FOLDER, torchvision:NAME or module:factory")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def resolve_paths(self, base: Path) -> None:
        """`hf:FOLDER` relative to the YAML file, like every other path in it."""
        if self.model.startswith("hf:"):
            self.model = f"hf:{(base / self.model.split(':', 1)[1]).resolve()}"


class TeacherConfig(ModelConfig):
    checkpoint: Path | None = None
    train: TrainConfig | None = None

    @model_validator(mode="after")
    def _source_of_weights(self) -> "TeacherConfig":
        if self.checkpoint is None and self.train is None and not self.model.startswith("hf:"):
            raise ValueError("the teacher needs a checkpoint or a train section (or an hf: folder, which has "
                             "its weights)")
        return self


class StudentConfig(ModelConfig):
    checkpoint: Path | None = Field(None, json_schema_extra=ADDED_LATER,
                                    description="start from these weights (.pt state_dict or .safetensors)")
    init_from_teacher: Literal["every_other"] | None = Field(
        None, json_schema_extra=ADDED_LATER,
        description="Transformers: copy the teacher's embeddings and every other layer (DistilBERT's init)")

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> "StudentConfig":
        if self.init_from_teacher is not None and self.checkpoint is not None:
            raise ValueError("give checkpoint or init_from_teacher, not both")
        return self


class GatesConfig(Strict):
    max_accuracy_drop: TopOneDrop | None = Field(None, ge=0, description="top-1, a fraction (0.02 = 2 points)")
    min_speedup: float | None = Field(None, gt=0)
    max_latency_ms: float | dict[int, float] | None = None
    max_size_mb: float | None = Field(None, gt=0)
    max_memory_mb: float | None = Field(None, gt=0, description="peak resident memory of the recommended artifact "
                                                                "alone in a fresh process, at the largest batch")
    min_engine_agreement: float | dict[str, float] | None = Field(
        None, json_schema_extra=ADDED_LATER,
        description="top-1 agreement of the recommended engine with the model it came from (a number, or "
                    "{precision: number}); unset, engines are still checked against 0.99 int8 / 0.999 others")

    max_perplexity_increase: float | None = Field(
        None, ge=0, json_schema_extra=ADDED_LATER,
        description="causal LMs: the recommended artifact's perplexity over the teacher's, relative (0.5 = +50%)")
    min_tokens_per_s: float | None = Field(None, gt=0, json_schema_extra=ADDED_LATER,
                                           description="causal LMs: decode tokens/s of the recommended artifact, batch 1")
    max_map_drop: float | None = Field(None, ge=0, lt=1, json_schema_extra=ADDED_LATER,
                                       description="detectors: mAP@[.5:.95] of the recommended engine below the "
                                                   "teacher's, a fraction (0.05 = 5 points)")

    @field_validator("min_engine_agreement")
    @classmethod
    def _agreement_limits(cls, value: Any) -> Any:
        limits = value if isinstance(value, dict) else {"": value} if value is not None else {}
        for precision, limit in limits.items():
            if precision and precision not in ENGINE_AGREEMENT:
                raise ValueError(f"unknown precision '{precision}'; known: {', '.join(ENGINE_AGREEMENT)}")
            if not 0 < limit <= 1:
                raise ValueError(f"{limit} is not a fraction in (0, 1]")
        return value

    def engine_agreement(self, precision: str) -> float:
        """The top-1 agreement an engine of `precision` must reach with its reference model."""
        return engine_agreement(self.min_engine_agreement, precision)

    @field_validator("max_latency_ms", mode="before")
    @classmethod
    def _latency_limits(cls, value: Any) -> Any:
        """A positive number, or {batch size: positive number}; a bad key or limit is named, not a union's dump."""
        if value is None:
            return None
        if isinstance(value, dict):
            return {_batch_key(key): _positive_ms(limit, f"batch {key}") for key, limit in value.items()}
        return _positive_ms(value, "")


def _batch_key(key: Any) -> int:
    text = str(key).strip()
    if isinstance(key, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"batch '{key}' is not a batch size: use positive integers as keys, e.g. {{1: 5.0, 32: 60.0}}")
    return int(text)


def _positive_ms(limit: Any, where: str) -> float:
    prefix = f"{where}: " if where else ""
    try:
        ms = float(limit) if not isinstance(limit, bool) else None
    except (TypeError, ValueError):
        ms = None
    if ms is None:
        raise ValueError(f"{prefix}'{limit}' is not a number of milliseconds")
    if not ms > 0:
        raise ValueError(f"{prefix}must be > 0 ms, got {limit}")
    return ms


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# File systems allow 255 bytes per name; the run folder is named after the pipeline, and Triton's
# model folder after `<name>_<precision>` (5 more).
MAX_NAME_BYTES = 250


class PipelineConfig(Strict):
    name: str
    seed: int = 0
    task: str | None = Field(None, json_schema_extra=ADDED_LATER,
                             description="image-classification | text-classification; unset: the task that "
                                         "claims the data (text-classification for data.source text)")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: StudentConfig
    stages: dict[str, Any] = Field(default_factory=dict)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY,
                                description="torch intra-op threads of every stage that trains or evaluates, "
                                            "unless it sets its own (default: torch's, one per core); 1 on a busy "
                                            "machine")
    # The YAML file it came from, so a stage that finds a bad field at run time can name it.
    _source_file: str = PrivateAttr("pipeline.yaml")
    # The task it runs: `task`, else the one that claims the data (parse_config resolves it).
    _task_name: str | None = PrivateAttr(None)

    @property
    def source_file(self) -> str:
        return self._source_file

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names the run folder)")
        if len(value.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"{len(value.encode())} bytes long; at most {MAX_NAME_BYTES} (it names the run folder, "
                             "and file systems allow 255 bytes per name)")
        return value

    @property
    def task_name(self) -> str:
        return self.task or self._task_name

    def stage(self, name: str) -> BaseModel:
        """The validated config of stage `name` (defaults when the section is absent)."""
        return self.stages[name]


def _format_loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def _section_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model of the section at `loc` inside `model`, following fields, optionals, lists and dicts."""
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(typing.get_args(annotation)):  # X | None, list[X], dict[K, X]
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_field(loc: tuple, model: type[BaseModel]) -> str:
    """'unknown field val_path; data takes: source, path, ...': the valid names, so a typo shows its fix."""
    section = _section_model(model, loc[:-1])
    if section is None:
        return f"unknown field {loc[-1]}"
    where = str(loc[-2]) if len(loc) > 1 else "the top level"
    return f"unknown field {loc[-1]}; {where} takes: {', '.join(section.model_fields)}"


def _raise_first(file: str, error: ValidationError, prefix: tuple = (),
                 model: type[BaseModel] | None = None) -> None:
    first = error.errors()[0]
    loc = prefix + tuple(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = _unknown_field(tuple(first["loc"]), model or PipelineConfig)
        if prefix and len(first["loc"]) == 1:  # a stage section: name it as the stage
            message = message.replace("the top level takes", f"{prefix[-1]} takes")
    if first["type"] == "missing":
        message = "field required"
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    raise ConfigError(file, _format_loc(loc), message) from None


def _validate_stages(file: str, raw: dict[str, Any], stages: Mapping[str, Any]) -> dict[str, BaseModel]:
    """Each section of `stages:` against its stage's `Config`; `stages` maps name -> stage class, in order."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "stages", "must be a mapping of stage name to options")
    unknown = sorted(set(raw) - set(stages))
    if unknown:
        raise ConfigError(file, f"stages.{unknown[0]}", f"unknown stage; known: {', '.join(stages)}")
    validated = {}
    for name, stage_cls in stages.items():
        if name not in raw and stage_cls.optional:
            continue
        section = raw.get(name) or {}
        try:
            validated[name] = stage_cls.Config.model_validate(section)
        except ValidationError as error:
            _raise_first(file, error, ("stages", name), stage_cls.Config)
    return validated


def _resolve_paths(cfg: PipelineConfig, base: Path) -> None:
    """Relative paths in the YAML are relative to the YAML file, then must exist."""
    cfg.teacher.resolve_paths(base)
    cfg.student.resolve_paths(base)
    for owner, name in _path_fields(cfg):
        if getattr(owner, name) is not None:
            setattr(owner, name, (base / getattr(owner, name)).resolve())


def _path_fields(cfg: PipelineConfig) -> list[tuple[Any, str]]:
    """(model, field) of every file or folder the config names."""
    fields = [(cfg.data, "path"), (cfg.data, "val_path"), (cfg.data, "test_path"), (cfg.teacher, "checkpoint"),
              (cfg.student, "checkpoint")]
    fields += [(cfg.data.text, "tokenizer")] if cfg.data.text is not None else []
    fields += [(cfg.data.corpus, "tokenizer"), (cfg.data.corpus, "prompts")] if cfg.data.corpus is not None else []
    fields += [(cfg.data.detection, "images")] if cfg.data.detection is not None else []
    return fields + ([(cfg.data.transfer, "path")] if cfg.data.transfer is not None else [])


def _check_files(file: str, cfg: PipelineConfig) -> None:
    for owner, name in _path_fields(cfg):
        path = getattr(owner, name)
        # webdataset shards may be a brace pattern (train-{000..009}.tar): its reader checks every shard
        if path is not None and not path.exists() and "{" not in path.name:
            where = "data.transfer" if owner is cfg.data.transfer else "data.text" if owner is cfg.data.text else \
                "data.corpus" if owner is cfg.data.corpus else \
                "data.detection" if owner is cfg.data.detection else \
                "data" if owner is cfg.data else "teacher" if owner is cfg.teacher else "student"
            raise ConfigError(file, f"{where}.{name}", f"file not found: {path}")
    for role in ("teacher", "student"):
        path = getattr(cfg, role).checkpoint
        if path is not None and not path.is_file():
            raise ConfigError(file, f"{role}.checkpoint", f"not a file: {path}")


def _check_models(file: str, cfg: PipelineConfig, check_model: Callable[[str], str | None]) -> None:
    for role in ("teacher", "student"):
        problem = check_model(getattr(cfg, role).model)
        if problem:
            raise ConfigError(file, f"{role}.model", problem)


def _resolve_task(file: str, cfg: PipelineConfig, tasks: Mapping[str, Any]) -> None:
    """`task:` must name a task; unset, the first task that claims the data runs. The task then checks its part
    of `data:` (options of another task, a source it cannot read)."""
    if cfg.task is not None and cfg.task not in tasks:
        raise ConfigError(file, "task", f"unknown task '{cfg.task}'; known: {', '.join(tasks)}")
    name = cfg.task or next((name for name, task in tasks.items() if task.claims(cfg.data)), None)
    if name is None:
        raise ConfigError(file, "data.source", f"no task reads '{cfg.data.source}'; set task: ({', '.join(tasks)})")
    problem = tasks[name].check_data(cfg.data)
    if problem:
        raise ConfigError(file, *problem)
    cfg._task_name = name


def parse_config(raw: Any, file: str = "pipeline.yaml", base: Path | None = None, *,
                 stages: Mapping[str, Any] | Callable[[str | None], Mapping[str, Any]], tasks: Mapping[str, Any],
                 check_model: Callable[[str], str | None] | None = None) -> PipelineConfig:
    """Validate an already-loaded YAML document.

    The schema knows no stage and no task: `stages` (name -> a class with `Config` and `optional`, in
    pipeline order; or a task's name -> that mapping, where a task runs stages of its own), `tasks` (name -> a class with `claims(data)` and `check_data(data)`, in the order
    they claim data) and `check_model` (a model name -> the problem with it, or None) are handed in by
    whoever loads a pipeline (compress.runner), so this module stays below everything it configures.
    """
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "the top level must be a mapping (name, data, teacher, student, stages, gates)")
    raw = dict(raw)
    stages_raw = raw.pop("stages", None) or {}
    stages_of = stages if callable(stages) else lambda task_name: stages
    for name, stage_cls in stages_of(None).items():  # a stage may fill in what its presence implies (prune: the student)
        complete = getattr(stage_cls.Config, "complete_pipeline", None)
        if complete is not None and isinstance(stages_raw, dict) and name in stages_raw:
            raw = complete(raw)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        _raise_first(file, error)
    _resolve_task(file, cfg, tasks)
    cfg.stages = _validate_stages(file, stages_raw, stages_of(cfg.task_name))
    cfg._source_file = file
    _resolve_paths(cfg, base or Path.cwd())
    _check_files(file, cfg)
    check_model = getattr(tasks[cfg.task_name], "check_model_name", None) or check_model
    if check_model is not None:
        _check_models(file, cfg, check_model)
    for stage_cfg in cfg.stages.values():
        resolve = getattr(stage_cfg, "resolve_paths", None)
        if resolve is not None:
            resolve(base or Path.cwd())
    for stage_name, stage_cfg in cfg.stages.items():
        check = getattr(stage_cfg, "check", None)
        if check is not None:
            problem = check(cfg)
            if problem:
                field, message = problem
                raise ConfigError(file, f"stages.{stage_name}.{field}", message)
    return cfg


def read_yaml(path: str | Path) -> Any:
    """The YAML document of a pipeline file (safe_load); a missing file or bad YAML is one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "", "file not found")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(str(path), "", f"cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(str(path), f"line {line}", f"not UTF-8 text (byte 0x{data[error.start]:02x}); "
                                                     "save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise ConfigError(str(path), where, f"not valid YAML: {getattr(error, 'problem', error)}") from None
    return raw


def dump_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The resolved config as plain data (what the run folder records as pipeline.yaml)."""
    data = cfg.model_dump(mode="json", exclude={"stages"})
    data["stages"] = {name: stage.model_dump(mode="json") for name, stage in cfg.stages.items()}
    return data
