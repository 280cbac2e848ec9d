"""How far an accuracy may move: Wilson intervals for one top-1, paired tests for two models on the same images.

Top-1 on 800 images moves by 0.125 points per image, so a difference of a few images says nothing.
Two models scored on the same images are compared on the images where exactly one of them is right
(the discordant pairs): exact McNemar for "is there a difference", an Agresti-Min interval for how
large it may be. Pure functions of counts and per-sample predictions, so a report rebuilt from saved
results gives the same verdicts.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

Z95 = 1.959963984540054
NOISE_P = 0.05  # a paired difference with p >= this is "within noise"


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion: honest near 0 and 1, where the normal one leaves [0, 1]."""
    if n <= 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def top1_interval(top1: float | None, n: int | None) -> tuple[float, float] | None:
    """The Wilson interval of a saved top-1 over `n` samples (top-1 × n is a whole number of images)."""
    if top1 is None or not n:
        return None
    return wilson(round(top1 * n), n)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p: the discordant pairs split as a fair coin would split them."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2 ** discordant)


def paired_interval(a_only: int, b_only: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of top-1(a) - top-1(b) on paired samples (Agresti & Min 2005: half a pair added to each cell)."""
    size = n + 2
    p_a, p_b = (a_only + 0.5) / size, (b_only + 0.5) / size
    diff = p_a - p_b
    half = z * math.sqrt(max(0.0, p_a + p_b - diff * diff) / size)
    return diff - half, diff + half


def decode(predictions: Any) -> list[int] | None:
    """Predicted classes as results.json keeps them: one line of space-separated class indices."""
    if isinstance(predictions, str):
        try:
            return [int(p) for p in predictions.split()]
        except ValueError:
            return None
    if isinstance(predictions, list) and all(isinstance(p, int) for p in predictions):
        return predictions
    return None


def encode(predicted: Sequence[int]) -> str:
    return " ".join(str(int(p)) for p in predicted)


def paired(predictions_a: Any, predictions_b: Any, labels: Any) -> dict[str, Any] | None:
    """a against b on the same samples: who alone got which right, the difference, its interval and p.

    None when either side has no per-sample predictions (results saved before they were kept) or the
    samples do not line up.
    """
    a, b, y = decode(predictions_a), decode(predictions_b), decode(labels)
    if a is None or b is None or y is None or not y or not len(a) == len(b) == len(y):
        return None
    a_only = sum(1 for pa, pb, t in zip(a, b, y) if pa == t and pb != t)
    b_only = sum(1 for pa, pb, t in zip(a, b, y) if pb == t and pa != t)
    n = len(y)
    p_value = mcnemar_exact(a_only, b_only)
    return {"n": n, "a_only": a_only, "b_only": b_only, "difference": (a_only - b_only) / n,
            "interval": paired_interval(a_only, b_only, n), "p_value": p_value, "within_noise": p_value >= NOISE_P}


def noise_phrase(test: dict[str, Any] | None) -> str:
    """'within noise (exact McNemar p = 0.5; 12 vs 8 of 360 images only one of the two got right)', or 'beyond
    noise (...)'; '' without a test."""
    if not test:
        return ""
    verdict = "within noise" if test["within_noise"] else "beyond noise"
    return (f"{verdict} (exact McNemar p = {test['p_value']:.2g}; {test['a_only']} vs {test['b_only']} of "
            f"{test['n']} images only one of the two got right)")

