"""A causal LM's measures on held-out documents: perplexity, next-token top-1, agreement with the teacher.

Perplexity is token-weighted (exp of the mean negative log-likelihood over every predicted token), as
WikiText numbers are. Each block's tokens count toward the document the block starts in, so a paired
bootstrap can resample documents, never tokens of one document apart (they are not independent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_ROUNDS = 2000


@dataclass
class TokenScores:
    """Per block of a split: summed negative log-likelihood, tokens, correct next tokens, document index."""

    nll: np.ndarray
    tokens: np.ndarray
    correct: np.ndarray
    documents: np.ndarray
    predictions: np.ndarray  # (blocks, block_size) argmax next tokens, for agreement with another model

    @property
    def perplexity(self) -> float:
        return float(math.exp(self.nll.sum() / max(1, self.tokens.sum())))

    @property
    def top1(self) -> float:
        return float(self.correct.sum() / max(1, self.tokens.sum()))

    def agreement(self, other: "TokenScores") -> float:
        """Share of scored positions (predictions -1: not a target) where both models predict the same token."""
        scored = self.predictions >= 0
        return float(((self.predictions == other.predictions) & scored).sum() / max(1, scored.sum()))

    def summary(self, reference: "TokenScores | None" = None) -> dict:
        found = {"perplexity": round(self.perplexity, 4), "top1": round(self.top1, 4),
                 "tokens": int(self.tokens.sum()), "documents": int(len(np.unique(self.documents)))}
        if reference is not None:
            found["agreement"] = round(self.agreement(reference), 4)
        return found

    def save(self, path) -> None:
        np.savez(path, nll=self.nll, tokens=self.tokens, correct=self.correct, documents=self.documents,
                 predictions=self.predictions)

    @classmethod
    def load(cls, path) -> "TokenScores":
        with np.load(path) as data:
            return cls(**{k: data[k] for k in ("nll", "tokens", "correct", "documents", "predictions")})


def score_logits(logits: np.ndarray, labels: np.ndarray,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(summed NLL, tokens, correct, argmax predictions) per row of next-token logits (rows, seq, vocab) against
    labels (rows, seq), over the positions `mask` marks (all by default; predictions elsewhere are -1)."""
    mask = np.ones(labels.shape, dtype=bool) if mask is None else mask.astype(bool)
    shifted = logits - logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(-1))
    picked = np.take_along_axis(shifted, labels[..., None], -1)[..., 0]
    nll = ((log_norm - picked) * mask).sum(-1)
    predictions = np.where(mask, logits.argmax(-1), -1)
    return nll.astype(np.float64), mask.sum(-1), ((predictions == labels) & mask).sum(-1), predictions


def score_torch_model(model, blocks, batch_size: int = 8, limit: int | None = None) -> TokenScores:
    """Score a torch causal LM on a split's blocks (TokenBlocks: items of block_size + 1 tokens), over each block's
    target positions (prompt/response data: the responses')."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    count = len(blocks) if limit is None else min(limit, len(blocks))
    parts = {"nll": [], "tokens": [], "correct": [], "predictions": []}
    with torch.no_grad():
        for start in range(0, count, batch_size):
            rows = range(start, min(count, start + batch_size))
            batch = torch.stack([blocks[i] for i in rows])
            labels = batch[:, 1:]
            mask = torch.stack([blocks.target_mask(i) for i in rows]) if hasattr(blocks, "target_mask") else \
                torch.ones_like(labels, dtype=torch.bool)
            logits = model(input_ids=batch[:, :-1].to(device)).logits.float().cpu()
            log_probs = torch.log_softmax(logits, -1)
            picked = log_probs.gather(-1, labels[..., None])[..., 0]
            predictions = torch.where(mask, logits.argmax(-1), -1)
            parts["nll"].append((-picked * mask).sum(-1).double().numpy())
            parts["tokens"].append(mask.sum(-1).numpy())
            parts["correct"].append(((predictions == labels) & mask).sum(-1).numpy())
            parts["predictions"].append(predictions.numpy().astype(np.int32))
    documents = np.array([blocks.document_of_block(i) for i in range(count)], dtype=np.int64)
    return TokenScores(**{k: np.concatenate(v) for k, v in parts.items()}, documents=documents)


def paired_perplexity_ratio(a: TokenScores, b: TokenScores, seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """Perplexity of `a` over `b` with a 95% interval from a paired bootstrap over documents.

    Both models scored the same blocks: each round draws documents with replacement and takes both models'
    tokens of the drawn documents, so the interval carries how much the corpus sample, not the model, moves it.
    """
    if not np.array_equal(a.documents, b.documents):
        raise ValueError("the two scores are not of the same blocks")
    documents, inverse = np.unique(a.documents, return_inverse=True)
    per_doc = [np.bincount(inverse, weights=w, minlength=len(documents)) for w in (a.nll, b.nll, a.tokens)]
    nll_a, nll_b, tokens = per_doc
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(documents), size=(rounds, len(documents)))
    counts = np.apply_along_axis(np.bincount, 1, draws, minlength=len(documents))
    n = counts @ tokens
    ratios = np.exp((counts @ nll_a) / n - (counts @ nll_b) / n)
    point = math.exp(nll_a.sum() / tokens.sum() - nll_b.sum() / tokens.sum())
    low, high = np.quantile(ratios, [0.025, 0.975])
    return {"ratio": round(point, 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "documents": int(len(documents)), "rounds": rounds}


def gap_closed(teacher: float, alone: float, distilled: float) -> float | None:
    """Share of the student-alone-to-teacher perplexity gap that KD closed (None without a gap), in log space."""
    gap = math.log(alone) - math.log(teacher)
    if gap <= 0:
        return None
    return round((math.log(alone) - math.log(distilled)) / gap, 4)
