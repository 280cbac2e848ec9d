"""The distillation objective: weighted KD losses, feature taps, and the teacher-output cache.

`losses: [{name: kd, weight: 0.9, temperature: 4}, {name: ce, weight: 0.1},
{name: fitnet, weight: 1.0, student: layers.3, teacher: layers.6}]` becomes
sum(weight * loss). When the training inputs are the same every epoch (no random augmentation)
the teacher's logits and hooked features are computed once and indexed per batch, from memory-mapped
files in the stage's folder (so a data set of any size fits, and a resumed run reuses them);
otherwise the teacher runs on each augmented (or mixed) batch in eval mode under no_grad, on the very
inputs the student sees: the consistent views of a patient teacher (Beyer et al. 2022).
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.config import TrainConfig
from compress.distill.features import FeatureTaps, missing_path
from compress.distill.losses import LOSSES, FeatureLoss, KDBatch, KDLoss
from compress.core.errors import ConfigError
from compress.core.fileio import atomic_path
from compress.data.records import BadImage
from compress.data.splits import Split
from compress.distill.train import Batch, augments, training_device
from compress.distill.transformer_losses import check_transformer_loss
from compress.distill.transformer_taps import NotATransformer, TransformerTaps, describe_transformer
from compress.tasks.inputs import call_model, to_tensors

CACHE_LIMIT_BYTES = 4 << 30  # in memory (no cache folder): above this the teacher runs per batch
DISK_SHARE = 0.5  # on disk: the cache may take at most this share of the free space
IN_MEMORY_BYTES = 256 << 20  # a cache file set this small is read into memory once; larger ones stay memory-mapped


class LossSpec(BaseModel):
    """One term of the objective: a registered loss, its weight, and the loss's own options."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = Field(1.0, ge=0)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def default_losses(temperature: float, alpha: float) -> list[LossSpec]:
    """Hinton's recipe: alpha * KD(T) + (1 - alpha) * CE."""
    return [LossSpec(name="kd", weight=alpha, temperature=temperature), LossSpec(name="ce", weight=1 - alpha)]


def loss_options(spec: LossSpec, temperature: float, label_smoothing: float) -> dict[str, Any]:
    """The spec's options plus the stage-wide temperature / label smoothing where the loss takes them."""
    params = inspect.signature(LOSSES[spec.name].__init__).parameters
    options = spec.options
    if "temperature" in params and "temperature" not in options:
        options["temperature"] = temperature
    if "label_smoothing" in params and "label_smoothing" not in options:
        options["label_smoothing"] = label_smoothing
    return options


def check_loss_specs(specs: list[LossSpec]) -> tuple[str, str] | None:
    """(field, message) for the first spec that cannot be built, checked without building models."""
    if not specs:
        return "losses", "give at least one loss"
    for i, spec in enumerate(specs):
        if spec.name not in LOSSES:
            return f"losses.{i}.name", f"unknown loss '{spec.name}'; known: {', '.join(sorted(LOSSES))}"
        params = inspect.signature(LOSSES[spec.name].__init__).parameters
        accepted = [p for p in params if p != "self"]
        for key, value in spec.options.items():
            if key not in accepted:
                return f"losses.{i}.{key}", f"loss '{spec.name}' has no option '{key}'; options: {', '.join(accepted) or 'none'}"
            if key == "temperature" and not (isinstance(value, (int, float)) and value > 0):
                return f"losses.{i}.temperature", "must be a number > 0"
        required = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty
                    and v.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        for key in required:
            if key not in spec.options:
                return f"losses.{i}.{key}", f"loss '{spec.name}' needs '{key}' (a module path, e.g. layers.3)"
    if not any(LOSSES[s.name].uses_teacher for s in specs):
        return "losses", "no loss uses the teacher; that is the baseline stage (stages.baseline)"
    return None


def check_feature_paths(specs: list[LossSpec], outline: Callable[[str], Any]) -> tuple[str, str] | None:
    """(field, message) for the first feature-loss module path that the configured model lacks; `outline(role)`
    is the role's model on the meta device (None when it cannot be built without data)."""
    outlines: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        for role in ("student", "teacher"):
            path = spec.options.get(role)
            if not isinstance(path, str):
                continue
            if role not in outlines:
                outlines[role] = outline(role)
            problem = missing_path(outlines[role], path) if outlines[role] is not None else None
            if problem:
                return f"losses.{i}.{role}", f"{role}: {problem}"
    return None


def probe_inputs(train: Split, count: int = 2) -> np.ndarray:
    """The first `count` training inputs; with skip_bad_images the first that decode (an image cut short shows
    only when decoded, and training leaves it out too)."""
    if not getattr(getattr(train, "decoding", None), "skip_bad", False):
        return train.inputs(range(min(count, len(train))))
    found: list[np.ndarray] = []
    for index in range(len(train)):
        if len(found) == count:
            break
        try:
            found.append(train.inputs([index]))
        except BadImage:
            continue
    return np.concatenate(found)


def split_outputs(outputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """{"logits", "feature.PATH"...} -> (logits, {PATH: features}): the cache's two halves."""
    return outputs["logits"], {name[len("feature."):]: v for name, v in outputs.items() if name != "logits"}


class Objective:
    """Callable loss for `fit`: (student_logits, Batch) -> (total, {part: value})."""

    def __init__(self, specs: list[LossSpec], student: nn.Module, teacher: nn.Module, train: Split,
                 cfg: TrainConfig, temperature: float, use_cache: bool = True, file: str = "pipeline.yaml",
                 section: str = "stages.distill", log: Callable[[str], None] = print, cache_dir: Path | None = None,
                 mixes: bool = False):
        """`mixes`: the batches are mixed (MixUp/CutMix) before the losses see them, so the teacher must
        see each mixed batch itself: a cache of its outputs on the unmixed inputs would not match."""
        self.device = training_device()
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.terms: list[tuple[str, float, KDLoss]] = []
        names = [s.name for s in specs]
        for i, spec in enumerate(specs):
            part = spec.name if names.count(spec.name) == 1 else f"{spec.name}_{i}"
            try:
                loss = LOSSES[spec.name](**loss_options(spec, temperature, cfg.label_smoothing))
            except ValueError as error:  # e.g. a layer_map that is not {int: int}
                raise ConfigError(file, f"{section}.losses.{i}", str(error)) from None
            self.terms.append((part, spec.weight, loss))
        self.internal_taps = transformer_setup(self.terms, specs, student, teacher, file, section)
        feature_terms = [(i, loss) for i, (_, _, loss) in enumerate(self.terms) if isinstance(loss, FeatureLoss)]
        for i, loss in feature_terms:
            for role, model, path in (("student", student, loss.student_path), ("teacher", teacher, loss.teacher_path)):
                problem = missing_path(model, path)
                if problem:
                    raise ConfigError(file, f"{section}.losses.{i}.{role}", f"{role}: {problem}")
        self.student_taps = FeatureTaps(student, [loss.student_path for _, loss in feature_terms])
        self.teacher_taps = FeatureTaps(teacher, [loss.teacher_path for _, loss in feature_terms])
        shapes = self._probe(student, probe_inputs(train))
        for i, loss in feature_terms:
            s_shape, t_shape = shapes[0][loss.student_path], shapes[1][loss.teacher_path]
            problem = type(loss).check_shapes(s_shape, t_shape)
            if problem:
                raise ConfigError(file, f"{section}.losses.{i}",
                                  f"{loss.student_path} -> {loss.teacher_path}: {problem}")
            loss.setup(s_shape, t_shape)
        self.modules = nn.ModuleList([loss for _, _, loss in self.terms])
        self.uses_teacher = any(loss.uses_teacher for _, _, loss in self.terms)
        self.cache: tuple[Any, dict[str, Any]] | None = None
        if not self.uses_teacher:
            return
        per_input = int(np.prod(shapes[2])) + sum(int(np.prod(s[1:])) for s in shapes[1].values())
        cache_bytes = len(train) * per_input * 4
        room = DISK_SHARE * shutil.disk_usage(cache_dir.parent).free if cache_dir else CACHE_LIMIT_BYTES
        if augments(cfg) or train.augments:
            log("teacher runs on every batch (random augmentation changes the inputs each epoch), eval mode, no_grad")
        elif mixes:
            log("teacher runs on every batch (MixUp/CutMix: teacher and student see the same mixed inputs)")
        elif not use_cache:
            log("teacher runs on every batch (teacher_cache: false)")
        elif self.internal_taps is not None:
            log("teacher runs on every batch (the Transformer losses read its hidden states and attention)")
        elif getattr(getattr(train, "decoding", None), "skip_bad", False):
            log("teacher runs on every batch (skip_bad_images: a skipped image would shift a cache's rows)")
        elif cache_bytes > room:
            log(f"teacher runs on every batch (its outputs would take {cache_bytes / 2**30:.1f} GiB to cache, "
                f"over {room / 2**30:.1f} GiB)")
        else:
            started = time.perf_counter()
            self.cache, reused = self._shared_outputs(train, cache_dir)
            mapped = self.cache is not None and not isinstance(self.cache[0], torch.Tensor)
            where = "in memory" if cache_dir is None else \
                f"memory-mapped in {cache_dir}" if mapped else f"in {cache_dir}, read into memory (small)"
            log(f"teacher outputs {'reused from' if reused else 'computed once and reused'}: inputs do not change "
                f"between epochs ({len(train)} inputs, {cache_bytes / 2**20:.1f} MiB {where}, "
                f"{time.perf_counter() - started:.1f}s)")

    @torch.no_grad()
    def _probe(self, student: nn.Module, x: np.ndarray):
        """Feature shapes of both models on two inputs (catches unmatched shapes before training)."""
        was_training = student.training
        student.eval()
        x = to_tensors(x, self.device)
        call_model(student.to(self.device), x)
        teacher_logits = call_model(self.teacher, x)
        student.train(was_training)
        if self.internal_taps is not None:
            for taps in self.internal_taps:
                taps.clear()
        student_shapes = {k: v.shape for k, v in self.student_taps.take().items()}
        teacher_shapes = {k: v.shape for k, v in self.teacher_taps.take().items()}
        return student_shapes, teacher_shapes, teacher_logits.shape[1:]

    def _shared_outputs(self, train: Split, cache_dir: Path | None):
        """(the teacher's outputs, whether a finished cache was reused). Under torchrun rank 0 alone decides and
        writes (one writer to a shared stage folder) and every rank waits for it: a rank that found the cache
        finished by itself would skip the wait the others are in."""
        import torch.distributed as dist

        if cache_dir is None or not dist.is_initialized() or dist.get_world_size() == 1:
            reused = self._cached(cache_dir, len(train)) if cache_dir is not None else None
            return (reused or self._teacher_outputs(train, cache_dir)), reused is not None
        found = [None]
        if dist.get_rank() == 0:
            found = [self._cached(cache_dir, len(train)) is not None]
            if not found[0]:
                self._teacher_outputs(train, cache_dir)
        dist.broadcast_object_list(found, src=0)  # every rank waits here for rank 0's files
        return self._cached(cache_dir, len(train)), found[0]

    @torch.no_grad()
    def _teacher_batches(self, train: Split, batch_size: int):
        """{"logits": ..., "feature.PATH": ...} of the teacher, batch by batch over the split in order."""
        for x, _ in train.batches(batch_size):
            yield {"logits": call_model(self.teacher, to_tensors(x, self.device)).float(),
                   **{f"feature.{path}": v.float() for path, v in self.teacher_taps.take().items()}}

    def _teacher_outputs(self, train: Split, cache_dir: Path | None, batch_size: int = 512):
        """Teacher logits and features of every training input, in order: memory-mapped files in `cache_dir`
        (tensors in memory without one)."""
        if cache_dir is None:
            parts: dict[str, list[torch.Tensor]] = {}
            for outputs in self._teacher_batches(train, batch_size):
                for name, value in outputs.items():
                    parts.setdefault(name, []).append(value)
            return split_outputs({name: torch.cat(values) for name, values in parts.items()})
        cache_dir.mkdir(parents=True, exist_ok=True)
        maps: dict[str, np.ndarray] = {}
        start = 0
        for outputs in self._teacher_batches(train, batch_size):
            for name, value in outputs.items():
                if name not in maps:
                    maps[name] = np.lib.format.open_memmap(cache_dir / f"{name}.npy", mode="w+", dtype=np.float32,
                                                           shape=(len(train), *value.shape[1:]))
                maps[name][start:start + len(value)] = value.cpu().numpy()
            start += len(outputs["logits"])
        for array in maps.values():
            array.flush()
        with atomic_path(cache_dir / "complete.json") as tmp:
            tmp.write_text(json.dumps({"inputs": len(train), "arrays": sorted(maps)}))
        return self._cached(cache_dir, len(train))

    @staticmethod
    def _cached(cache_dir: Path, count: int):
        """The cache a previous (killed) attempt of this stage finished writing, read-only; None if there is none."""
        marker = cache_dir / "complete.json"
        written = json.loads(marker.read_text()) if marker.is_file() else {}
        if written.get("inputs") != count:
            return None
        files = [cache_dir / f"{name}.npy" for name in written["arrays"]]
        if sum(f.stat().st_size for f in files) <= IN_MEMORY_BYTES:  # small: index tensors, not a memory map per batch
            return split_outputs({f.stem: torch.from_numpy(np.load(f)) for f in files})
        return split_outputs({f.stem: np.load(f, mmap_mode="r") for f in files})

    def teacher_outputs(self, batch: Batch) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if not self.uses_teacher:
            return None, {}
        if self.cache is not None:
            logits, features = self.cache
            if isinstance(logits, torch.Tensor):  # computed here on the device, or a small cache read from disk
                idx = batch.indices.to(logits.device)
                return logits[idx].to(self.device), {path: value[idx].to(self.device) for path, value in features.items()}
            idx = batch.indices.numpy()

            def rows(array: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(array[idx])).to(self.device)

            return rows(logits), {path: rows(value) for path, value in features.items()}
        with torch.no_grad():
            logits = call_model(self.teacher, batch.x)
        return logits, self.teacher_taps.take()

    def __call__(self, student_logits, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        dist_logits = None
        if isinstance(student_logits, (tuple, list)):  # a DeiT student in distilled training: (class, distillation)
            student_logits, dist_logits = student_logits
        mask = batch.x.get("attention_mask") if isinstance(batch.x, dict) else None
        student_internals = self.internal_taps[0].take(mask) if self.internal_taps is not None else None
        student_features = self.student_taps.take()
        teacher_logits, teacher_features = self.teacher_outputs(batch)
        teacher_internals = self.internal_taps[1].take(mask) if self.internal_taps is not None else None
        kd_batch = KDBatch(student_logits, teacher_logits, batch.labels, student_features, teacher_features,
                           batch.soft_labels, student_internals, teacher_internals, dist_logits)
        total = student_logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for part, weight, loss in self.terms:
            value = loss(kd_batch)
            total = total + weight * value
            parts[part] = float(value.detach())
        return total, parts

    def close(self) -> None:
        self.student_taps.remove()
        self.teacher_taps.remove()
        for taps in self.internal_taps or ():
            taps.remove()


def reads_internals(loss) -> bool:
    """A loss (class or instance) of hidden states and attention: both models must be Transformers, tapped."""
    return getattr(loss, "uses_internals", False)


def reads_distillation_token(loss) -> bool:
    """DeiT's loss: the student's distillation-token logits (any teacher)."""
    return getattr(loss, "uses_distillation_token", False)


def transformer_setup(terms, specs: list[LossSpec], student: nn.Module, teacher: nn.Module, file: str,
                      section: str) -> tuple[TransformerTaps, TransformerTaps] | None:
    """Check the Transformer losses against both models, size their projections, and tap both models'
    hidden states and attention projections (None when no loss needs them)."""
    chosen = [(i, loss) for i, (_, _, loss) in enumerate(terms) if reads_internals(loss) or reads_distillation_token(loss)]
    if not chosen:
        return None
    # DeiT's teacher is any classifier (a CNN in the paper): only losses of internals need it to be a Transformer.
    needs_teacher = any(reads_internals(loss) for _, loss in chosen)
    described = {"teacher": {}}
    for role, model in (("student", student), ("teacher", teacher))[:2 if needs_teacher else 1]:
        try:
            described[role] = describe_transformer(model)
        except NotATransformer as error:
            raise ConfigError(file, f"{section}.losses.{chosen[0][0]}", f"{role}: {error}") from None
    for i, loss in chosen:
        problem = check_transformer_loss(specs[i].name, specs[i].options, described["student"], described["teacher"])
        if problem:
            raise ConfigError(file, f"{section}.losses.{i}", problem)
        if hasattr(loss, "setup_widths"):
            loss.setup_widths(described["student"]["hidden"], described["teacher"]["hidden"])
    if any(reads_distillation_token(loss) for _, loss in chosen):
        student.set_distilled_training(True)  # timm: training forwards return (class, distillation) logits
    if not needs_teacher:
        return None
    return TransformerTaps(student), TransformerTaps(teacher)


def check_transformer_losses(specs: list[LossSpec], outline: Callable[[str], Any]) -> tuple[str, str] | None:
    """(field, message) for the first Transformer loss whose layers, heads or widths do not fit the configured
    models, told on torch's meta device (no weights, no data) for `compress validate` (`outline(role)`)."""
    chosen = [(i, s) for i, s in enumerate(specs) if s.name in LOSSES
              and (reads_internals(LOSSES[s.name]) or reads_distillation_token(LOSSES[s.name]))]
    if not chosen:
        return None
    needs_teacher = any(reads_internals(LOSSES[s.name]) for _, s in chosen)
    described = {"teacher": {}}
    for role in ("student", "teacher")[:2 if needs_teacher else 1]:
        model = outline(role)
        if model is None:
            return None  # built only from real data (a checkpoint's geometry): the stage checks when it starts
        try:
            described[role] = describe_transformer(model)
        except NotATransformer as error:
            index, spec = chosen[0]
            need = "a student with a distillation token (timm deit_*_distilled_*)" \
                if reads_distillation_token(LOSSES[spec.name]) else "Transformers"
            return f"losses.{index}", f"{spec.name} needs {need}; {role}: {error}"
    for i, spec in chosen:
        problem = check_transformer_loss(spec.name, spec.options, described["student"], described["teacher"])
        if problem:
            return f"losses.{i}", problem
    return None
