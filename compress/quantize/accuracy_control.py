"""Accuracy-controlled PTQ: int8 everywhere except the layers an accuracy budget cannot afford.

NNCF's `quantize_with_accuracy_control` does this for OpenVINO models; this is the same algorithm for
any model a `quantize(float_layers)` callable can quantize (the quantize stage's torch student):

1. quantize every layer and measure the top-1 drop against the float model on the validation set;
2. rank the layers by sensitivity once: each layer alone kept in float, the others int8, and how much
   of the quantized model's output error (normalized MSE of the logits against the float model on a
   ranking subset, as NNCF ranks without a per-sample metric) goes away;
3. while the drop is above the budget, return the next most sensitive layer to float and re-measure,
   until the budget holds or `max_float_layers` are float.

Each candidate is quantized afresh with its float layers out of scope, so what is measured is what the
export then writes: no quantizer is switched off behind the exporter's back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

# The share of quantizable layers that may return to float when the pipeline sets no limit: the rest
# (at least 80 %) stays int8, or the result is hardly an int8 model any more.
DEFAULT_FLOAT_SHARE = 0.2


@dataclass
class Scorers:
    """How candidates are judged: top-1 on the validation set, and logits + labels on the ranking subset."""
    top1: Callable[[Any], float]
    ranking: Callable[[Any], tuple[np.ndarray, np.ndarray]]


@dataclass
class LayerSensitivity:
    layer: str
    op: str
    ranking_top1: float  # top-1 on the ranking subset with only this layer in float
    output_error: float  # normalized MSE of the logits against the float model, this layer in float
    error_removed: float  # share of the all-int8 model's output error that this layer in float removes


@dataclass
class ControlResult:
    budget: float
    float_top1: float
    plain_top1: float  # every layer int8
    top1: float  # the returned model's
    layers: int  # quantizable layers (the user's ignored_scope excluded)
    max_float_layers: int
    float_layers: list[str]
    sensitivity: list[LayerSensitivity]
    steps: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None

    @property
    def drop(self) -> float:
        return self.float_top1 - self.top1

    @property
    def met(self) -> bool:
        return self.drop <= self.budget + 1e-12

    def summary(self) -> dict[str, Any]:
        """Plain data for the stage's outputs (results.json and the report)."""
        return {"max_accuracy_drop": self.budget, "float_top1": self.float_top1, "plain_ptq_top1": self.plain_top1,
                "top1": self.top1, "drop": self.drop, "met": self.met, "layers": self.layers,
                "int8_layers": self.layers - len(self.float_layers), "max_float_layers": self.max_float_layers,
                "float_layers": list(self.float_layers), "sensitivity": [asdict(s) for s in self.sensitivity],
                "steps": list(self.steps)}


def default_float_limit(layers: int) -> int:
    return max(1, math.floor(layers * DEFAULT_FLOAT_SHARE)) if layers > 1 else 0


def normalized_mse(reference: np.ndarray, candidate: np.ndarray) -> float:
    """mean((reference - candidate)^2) / mean(reference^2): scale-free, so layers compare across models."""
    reference = np.asarray(reference, np.float64)
    power = float(np.mean(reference ** 2)) or 1.0
    return float(np.mean((reference - np.asarray(candidate, np.float64)) ** 2)) / power


def control_accuracy(layers: list[tuple[str, str]], quantize: Callable[[list[str]], Any], score: Scorers,
                     float_model: Any, budget: float, max_float_layers: int | None = None,
                     log: Callable[[str], None] = print) -> ControlResult:
    """The int8 model with the fewest float layers (most sensitive first) whose drop is within `budget`.

    `layers` are (module name, op type) of every quantizable layer; `quantize(float_layers)` returns a
    model quantized with those layers left in float; `score` judges a model, `float_model` is the
    reference. With the limit reached and the budget still missed, the last model is returned and `met`
    is False: the stage says so and the gates decide.
    """
    # At least one layer stays int8: a model with none is not an int8 model.
    limit = default_float_limit(len(layers)) if max_float_layers is None else min(max_float_layers, len(layers) - 1)
    float_top1 = score.top1(float_model)
    model = quantize([])
    plain_top1 = score.top1(model)
    result = ControlResult(budget, float_top1, plain_top1, plain_top1, len(layers), limit, [], [], model=model)
    result.steps.append({"float_layers": [], "top1": plain_top1, "drop": float_top1 - plain_top1})
    log(f"accuracy control: all {len(layers)} layers int8, top-1 {plain_top1:.4f} (float {float_top1:.4f}, "
        f"drop {float_top1 - plain_top1:.4f}, budget {budget:.4f})")
    if result.met or limit == 0:
        return result
    result.sensitivity = rank_layers(layers, quantize, score, float_model, model)
    log("accuracy control: most sensitive layers: " + ", ".join(
        f"{s.layer} ({s.error_removed:.0%} of the error)" for s in result.sensitivity[:5]))
    for candidate in result.sensitivity[:limit]:
        float_layers = [*result.float_layers, candidate.layer]
        model = quantize(float_layers)
        top1 = score.top1(model)
        result.float_layers, result.model, result.top1 = float_layers, model, top1
        result.steps.append({"float_layers": float_layers, "top1": top1, "drop": float_top1 - top1})
        log(f"accuracy control: {candidate.layer} back to float: top-1 {top1:.4f} (drop {float_top1 - top1:.4f})")
        if result.met:
            break
    if not result.met:
        log(f"accuracy control: the budget {budget:.4f} is not met with {len(result.float_layers)} float layers "
            f"(max_float_layers {limit}): the drop is {result.drop:.4f}")
    return result


def rank_layers(layers: list[tuple[str, str]], quantize: Callable[[list[str]], Any], score: Scorers,
                float_model: Any, all_int8: Any) -> list[LayerSensitivity]:
    """Every layer alone in float, most error removed first (ties: higher ranking top-1, then model order)."""
    reference, _ = score.ranking(float_model)
    plain_error = normalized_mse(reference, score.ranking(all_int8)[0])
    ranked = []
    for name, op in layers:
        logits, labels = score.ranking(quantize([name]))
        error = normalized_mse(reference, logits)
        removed = (plain_error - error) / plain_error if plain_error > 0 else 0.0
        top1 = float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0
        ranked.append(LayerSensitivity(name, op, top1, error, removed))
    order = sorted(range(len(ranked)), key=lambda i: (-ranked[i].error_removed, -ranked[i].ranking_top1, i))
    return [ranked[i] for i in order]
