"""teacher: load the user's checkpoint, or train the teacher when `teacher.train` is given.

A checkpoint must fit the config: the architecture `teacher.model` names, the data's classes,
channels and input size. That is checked twice, by `check_models` when the pipeline is loaded
(`compress validate`, before a run touches anything) as far as the data can be known without
reading it, and against the real data when the stage starts, before anything is trained or saved.
"""

from __future__ import annotations

from typing import Any

import torch

from compress.config import KEY_DUMP, PipelineConfig
from compress.core.errors import ConfigError
from compress.data.transforms import batch_mixer
from compress.distill.train import accuracy, fit
from compress.core.fileio import sha256_file
from compress.models import (CheckpointError, ModelSpec, build_model, kwargs_problem, load_state_dict,
                             save_checkpoint, weights_problem)
from compress.models.external import adapt_keys, head_keys, hf_state, hf_weights
from compress.stages.contract import Stage, StageContext
from compress.tasks.task import Geometry
from compress.tasks.registry import task_for


def check_models(pipeline: PipelineConfig) -> None:
    """What the run would refuse about the models, found before it starts: kwargs, channels, checkpoint."""
    file = pipeline.source_file
    task = task_for(pipeline)
    geometry = task.declared_geometry()  # None: only reading the data tells
    for role in ("teacher", "student"):
        cfg = getattr(pipeline, role)
        # A task that builds its own models checks their kwargs (a detection builder is not a classifier's).
        problem = None if task.checks_models_itself else kwargs_problem(cfg.model, cfg.kwargs)
        if problem:
            raise ConfigError(file, f"{role}.kwargs.{problem[0]}", problem[1])
        _check_channels(pipeline, role, geometry or Geometry())
    for role in ("teacher", "student"):
        if weights_path(pipeline, role) is not None:
            state, stored = _read_checkpoint(pipeline, role)
            spec = _config_spec(pipeline, geometry, stored, role)
            if spec is not None:
                _check_fit(pipeline, spec, state, stored, geometry, role)


def _check_channels(pipeline: PipelineConfig, role: str, geometry: Geometry) -> None:
    model = getattr(pipeline, role).model
    if not model.startswith("torchvision:") or geometry.in_channels in (None, 3):
        return
    file, data = pipeline.source_file, pipeline.data
    if data.streams and data.grayscale:
        raise ConfigError(file, "data.grayscale", f"is true, but {role}.model {model} takes 3-channel images: set "
                          "grayscale: false and channels: 3 (gray images are then read as RGB), or use a built-in "
                          "model or a module:factory that takes in_channels")
    raise ConfigError(file, f"{role}.model", f"{model} takes 3-channel images, the data ({data.source}) has "
                      f"{geometry.in_channels}: use a built-in model (any channels) or a module:factory that "
                      "takes in_channels")


def weights_path(pipeline: PipelineConfig, role: str = "teacher"):
    """Where a model's weights come from: its checkpoint, else an hf: folder's own weights, else None."""
    return getattr(pipeline, role).checkpoint or hf_weights(getattr(pipeline, role).model)


def student_weights_key(pipeline: PipelineConfig) -> dict[str, str]:
    """The student's starting weights in its stages' keys (only when it has some: other keys stay as they were)."""
    path = weights_path(pipeline, "student")
    return {"student_weights_sha256": sha256_file(path)} if path is not None else {}


def weights_field(pipeline: PipelineConfig, role: str = "teacher") -> str:
    return f"{role}.checkpoint" if getattr(pipeline, role).checkpoint is not None else f"{role}.model"


def _read_checkpoint(pipeline: PipelineConfig, role: str = "teacher") -> tuple[dict[str, Any], dict[str, Any] | None]:
    path = weights_path(pipeline, role)
    try:
        if getattr(pipeline, role).checkpoint is None:  # an hf: folder's own weights
            return hf_state(str(path.parent), task_for(pipeline).hf_auto_class), None
        return load_state_dict(path)
    except CheckpointError as error:
        raise ConfigError(pipeline.source_file, weights_field(pipeline, role), f"{path.name}: {error.reason}") from None
    except ValueError as error:
        raise ConfigError(pipeline.source_file, weights_field(pipeline, role), f"{path}: {error}") from None


def _config_spec(pipeline: PipelineConfig, geometry: Geometry | None, stored: dict | None,
                 role: str = "teacher") -> ModelSpec | None:
    """The teacher the config describes, at the data's geometry where known, else the checkpoint's; None when
    neither tells it (a bare state_dict for data whose geometry shows only when it is read, or a task whose
    geometry only the data tells: the stage checks the checkpoint when it starts)."""
    if geometry is None:
        return None
    stored = stored or {}
    values = [getattr(geometry, k) if getattr(geometry, k) is not None else stored.get(k)
              for k in ("in_channels", "num_classes", "input_size")]
    if None in values:
        return None
    cfg = getattr(pipeline, role)
    return ModelSpec(cfg.model, *values, dict(cfg.kwargs))


def spec_differences(stored: dict[str, Any] | None, spec: ModelSpec, geometry: Geometry,
                     role: str = "teacher") -> list[str]:
    """What a checkpoint's stored spec says against the config and the data (only what is known)."""
    if not stored:
        return []
    found = []
    if stored.get("name") != spec.name:
        found.append(f"it holds a '{stored.get('name')}', {role}.model is '{spec.name}'")
    for key, what in (("num_classes", "classes"), ("in_channels", "input channels"), ("input_size", "px inputs")):
        have, want = stored.get(key), getattr(geometry, key)
        if want is not None and have is not None and have != want:
            found.append(f"it is for {have} {what}, the data has {want}" if key != "input_size"
                         else f"it takes {have}x{have} inputs, the data is {want}x{want}")
    return found


def _check_fit(pipeline: PipelineConfig, spec: ModelSpec, state: dict, stored: dict | None,
               geometry: Geometry, role: str = "teacher") -> tuple[dict, list[str]]:
    """Refuse a checkpoint whose spec or weights do not fit the config (on torch's meta device: no memory).

    Returns the state_dict under the model's key names and the keys of a classifier head that is for another
    class count: a bare state_dict (timm, Hugging Face, torchvision weights) gets a fresh head; one of our
    checkpoints, made for some data, is refused instead (spec_differences)."""
    path, file = weights_path(pipeline, role), pipeline.source_file
    differences, head = spec_differences(stored, spec, geometry, role), []
    if not differences:
        with torch.device("meta"):
            model = build_model(spec)
        state = adapt_keys(model, state)
        head = head_keys(model, state) if stored is None and geometry.num_classes is not None else []
        problem = weights_problem(model, {**state, **{key: model.state_dict()[key] for key in head}})
        if problem:
            kwargs = f" with kwargs {spec.kwargs}" if spec.kwargs else ""
            differences = [f"its weights do not fit {spec.name}{kwargs}: {problem}"]
    if differences:
        raise ConfigError(file, weights_field(pipeline, role),
                          f"{path.name} does not match the config: {'; '.join(differences)}")
    return state, head


class TeacherStage(Stage):
    name = "teacher"

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        teacher = pipeline.teacher
        return {
            "teacher": teacher.model_dump(**KEY_DUMP, exclude={"checkpoint"}),
            "checkpoint_sha256": sha256_file(weights_path(pipeline)) if weights_path(pipeline) else None,
            "data": pipeline.data.model_dump(mode="json"),
            "seed": pipeline.seed,
        }

    def threads(self, pipeline: PipelineConfig) -> tuple[str, int] | None:
        train = pipeline.teacher.train
        return ("teacher.train.threads", train.threads) if train is not None and train.threads else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg, data = ctx.pipeline.teacher, ctx.data
        spec = ctx.task.model_spec(cfg, data)
        torch.manual_seed(ctx.pipeline.seed)
        model, best_epoch, head = None, None, []
        if weights_path(ctx.pipeline) is not None:
            ctx.log(f"loading {weights_path(ctx.pipeline)}")
            model, head = self.load_checkpoint(ctx.pipeline, spec, ctx.log)
        if model is None or (head and cfg.train is not None):
            model = build_model(spec) if model is None else model
            ctx.log(f"training {cfg.model} for {cfg.train.epochs} epochs")
            result = fit(model, data.train, data.val, cfg.train, ctx.stage_dir, ctx.pipeline.seed, log=ctx.log,
                         mixer=batch_mixer(ctx.pipeline.data.augment, data.num_classes))
            best_epoch = result.best_epoch
        val_top1 = accuracy(model, data.val)
        path = ctx.stage_dir / "teacher.pt"
        save_checkpoint(path, model, spec)
        ctx.log(f"teacher val top-1 {val_top1:.4f}")
        return {"checkpoint": ctx.relative(path), "val_top1": val_top1, "best_epoch": best_epoch}

    @staticmethod
    def load_checkpoint(pipeline: PipelineConfig, spec: ModelSpec, log=print, role: str = "teacher"):
        """A model's weights as the model the config names, refused (exit 2) where they do not fit the data;
        a head for another class count is replaced (fresh weights), which the log says. (model, head keys)"""
        model = build_model(spec)
        state, head = checked_checkpoint(pipeline, spec, role)
        if head:
            own = model.state_dict()
            trained = ", trained by distill" if role == "student" else ", trained by teacher.train" \
                if pipeline.teacher.train else "; set teacher.train to train it"
            log(f"{weights_field(pipeline, role)}: {weights_path(pipeline, role).name} has a "
                f"{state[head[0]].shape[0]}-class head, the data has {spec.num_classes} classes: {', '.join(head)} "
                f"replaced (fresh weights{trained})")
            state = {**state, **{key: own[key] for key in head}}
        model.load_state_dict(state)
        return model.eval(), head


def checked_checkpoint(pipeline: PipelineConfig, spec: ModelSpec,
                       role: str = "teacher") -> tuple[dict[str, Any], list[str]]:
    """The state_dict of a model's weights once it is known to fit `spec` (the config's model at the data's
    real geometry) and the keys of a head to replace; a ConfigError naming the field and what differs otherwise."""
    state, stored = _read_checkpoint(pipeline, role)
    return _check_fit(pipeline, spec, state, stored, Geometry(spec.in_channels, spec.input_size, spec.num_classes),
                      role)
