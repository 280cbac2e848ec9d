"""Training a causal LM on packed blocks: alone (next-token cross-entropy) or distilled from a teacher.

KD here is token-level: every position's next-token distribution of the student is pulled toward the
teacher's by one of compress.tasks.causal_lm.token_losses (forward KL, reverse KL, generalized JSD, skew KL),
mixed with the cross-entropy on the data by `alpha`, optionally with hidden states matched through a layer
map. With `on_policy` (GKD's lambda, Agarwal et al. 2024) that share of batches is the student's own samples,
scored by the teacher: each block's first prompt (prompt/response data) or first half (plain text) continued
by the student to the block's end. With `teacher_top_k` the teacher's top-k
log-probs per token are computed once into shards on disk and reused across epochs and reruns (DistillKit's
offline distillation) instead of running the teacher every step.

Each epoch ends with a checkpoint (weights, optimizer, schedule position) so a killed run resumes at the
next epoch; the weights of the epoch with the lowest validation perplexity are kept.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from compress.tasks.causal_lm import lm_sharding
from compress.tasks.causal_lm import token_losses as lm_losses
from compress.tasks.causal_lm.metrics import score_torch_model


@dataclass
class TrainOptions:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    val_blocks: int | None = 64  # blocks of val scored each epoch (None: all)


@dataclass
class DistillOptions:
    loss: str = "forward_kl"
    alpha: float = 0.5  # weight of the KD loss; 1 - alpha goes to cross-entropy on the data
    params: dict[str, Any] = field(default_factory=dict)  # temperature, beta, alpha of skew losses
    hidden_weight: float = 0.0
    hidden_kind: str = "cosine"
    layer_map: list[tuple[int, int]] = field(default_factory=list)
    on_policy: float = 0.0
    teacher_top_k: int | None = None
    shard_teacher: bool = False  # under torchrun: FSDP over the ranks


class TeacherCache:
    """The teacher's top-k next-token log-probs of training blocks (`indices`: the ones this rank reads; None: all),
    in shards of `per_shard` blocks."""

    def __init__(self, folder: Path, indices: list[int] | None = None, per_shard: int = 64):
        self.folder = folder
        self.indices = indices
        self.per_shard = per_shard

    def _label(self) -> str:
        return "" if self.indices is None else f" ({self.folder.name})"

    def _covered(self, blocks) -> list[int]:
        return list(range(len(blocks))) if self.indices is None else self.indices

    def build(self, teacher, blocks, k: int, batch_size: int, log: Callable[[str], None]) -> None:
        covered = self._covered(blocks)
        self._position = {block: n for n, block in enumerate(covered)}
        done = self.folder / "done.json"
        if done.is_file() and json.loads(done.read_text()).get("k") == k \
                and json.loads(done.read_text()).get("blocks") == len(covered):
            log(f"teacher cache{self._label()}: reused ({json.loads(done.read_text())['bytes'] / 1e6:.1f} MB)")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        teacher.eval()
        device = next(teacher.parameters()).device
        total = 0
        with torch.no_grad():
            for shard_start in range(0, len(covered), self.per_shard):
                indices, logprobs = [], []
                shard_stop = min(len(covered), shard_start + self.per_shard)
                for start in range(shard_start, shard_stop, batch_size):
                    batch = torch.stack([blocks[covered[n]] for n in range(start, min(shard_stop, start + batch_size))])
                    top_i, top_lp = lm_losses.topk_teacher(teacher(input_ids=batch[:, :-1].to(device)).logits, k)
                    indices.append(top_i.cpu().numpy().astype(np.int32))
                    logprobs.append(top_lp.float().cpu().numpy().astype(np.float16))
                name = self.folder / f"shard_{shard_start // self.per_shard:05d}"
                np.save(f"{name}.idx.npy", np.concatenate(indices))
                np.save(f"{name}.lp.npy", np.concatenate(logprobs))
                total += sum(a.nbytes for a in indices) + sum(a.nbytes for a in logprobs)
        tokens = len(covered) * (len(blocks[0]) - 1)
        done.write_text(json.dumps({"k": k, "blocks": len(covered), "bytes": total}))
        log(f"teacher cache{self._label()}: top-{k} of {tokens} tokens, {total / tokens:.0f} bytes/token, {total / 1e6:.1f} MB")

    def lookup(self, block_indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx, lp = [], []
        for i in block_indices:
            position = self._position[i] if self.indices is not None else i
            name = self.folder / f"shard_{position // self.per_shard:05d}"
            row = position % self.per_shard
            idx.append(np.load(f"{name}.idx.npy", mmap_mode="r")[row])
            lp.append(np.load(f"{name}.lp.npy", mmap_mode="r")[row])
        return torch.from_numpy(np.stack(idx)).long(), torch.from_numpy(np.stack(lp).astype(np.float32))


class IndexedBlocks(torch.utils.data.Dataset):
    """Blocks with their index (so a batch can find its rows in the teacher cache) and their labels' target mask
    (all True but for prompt/response data, where a prompt's tokens are not predicted)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int):
        block = self.blocks[i]
        mask = self.blocks.target_mask(i) if hasattr(self.blocks, "target_mask") else \
            torch.ones(len(block) - 1, dtype=torch.bool)
        return i, block, mask


def train_lm(model, train_blocks, val_blocks, options: TrainOptions, folder: Path,
             log: Callable[[str], None], teacher=None, distill: DistillOptions | None = None,
             distributed: bool = False) -> dict[str, Any]:
    """Train `model` in place; returns the history and the chosen epoch. Resumes from folder/last.pt.

    `distributed`: every torchrun rank calls this (a stage that runs on every rank): the student trains under DDP
    on the rank's share of the blocks (compress.tasks.causal_lm.lm_sharding), with `distill.shard_teacher` the
    teacher is sharded by FSDP, the teacher cache is one set of shards per rank, and rank 0 alone writes.

    On a machine with CUDA the student and teacher train on the rank's GPU (compress.distill.train's
    training_device) and go back to the CPU at the end, where the stages that follow read them."""
    from compress.distill.train import training_device

    rank, size = lm_sharding.world() if distributed else (0, 1)
    device = training_device()
    sharded = distill is not None and distill.shard_teacher and size > 1
    model.to(device)
    if teacher is not None and not sharded:  # a sharded teacher's shards are placed by FSDP
        teacher.to(device)
    if device.type != "cpu":
        log(f"training on {device} ({torch.cuda.get_device_name(device)})")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    random.seed(options.seed)  # the same on every rank: on-policy batches happen on all ranks at once
    mine = lm_sharding.rank_blocks(len(train_blocks), rank, size)
    steps_per_epoch = max(1, len(mine) // options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    projections = None  # before the schedule, which sets every group's lr
    if distill is not None and distill.hidden_weight > 0:
        projections = lm_losses.make_projections(_hidden_dims(model), _hidden_dims(teacher), distill.layer_map).to(device)
        optimizer.add_param_group({"params": list(projections.parameters()), "lr": options.lr})
    warmup = max(1, int(options.warmup_fraction * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, step / max(1, total_steps)))))
    if sharded:
        local, total = lm_sharding.shard_teacher(teacher, device)
        log(f"teacher sharded by FSDP over {size} ranks: each holds {local / 1e6:.2f}M of its {total / 1e6:.2f}M "
            f"parameters between forwards")
    cache = None
    if distill is not None and distill.teacher_top_k:
        cache = TeacherCache(folder / "teacher_cache" / (f"rank-{rank}-of-{size}" if size > 1 else ""),
                             mine if size > 1 else None)
        cache.build(teacher, train_blocks, distill.teacher_top_k, options.batch_size, log)
    history, start_epoch, best = _resume(folder, model, optimizer, schedule, projections)
    trained = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if size > 1 else model
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(IndexedBlocks(train_blocks), mine),
                                         batch_size=options.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(options.seed + rank))
    for epoch in range(start_epoch, options.epochs):
        loader.generator.manual_seed(options.seed + epoch + 1000 * rank)
        model.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for indices, batch, targets in loader:
            batch, targets = batch.to(device), targets.to(device)
            loss = _step_loss(trained, model, batch, targets, indices.tolist(), teacher, distill, cache, projections)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if projections is not None:
                lm_sharding.average_gradients(projections.parameters(), size)
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            schedule.step()
            loss_sum, seen = loss_sum + loss.item(), seen + 1
        val = score_torch_model(model, val_blocks, options.batch_size, options.val_blocks).summary()
        entry = {"epoch": epoch + 1, "loss": round(loss_sum / max(1, seen), 4), "val_perplexity": val["perplexity"],
                 "val_top1": val["top1"], "seconds": round(time.perf_counter() - started, 2)}
        history.append(entry)
        log(f"epoch {epoch + 1}/{options.epochs}: loss {entry['loss']:.4f}, val perplexity {val['perplexity']:.2f}, "
            f"top-1 {val['top1']:.3f} ({entry['seconds']:.0f}s)")
        if best is None or val["perplexity"] < best["val_perplexity"]:
            best = entry
            if rank == 0:
                torch.save(model.state_dict(), folder / "best.pt")
        if rank == 0:
            _checkpoint(folder, model, optimizer, schedule, projections, history, best)
        lm_sharding.barrier(size)
    model.to("cpu").load_state_dict(torch.load(folder / "best.pt", weights_only=True, map_location="cpu"))
    if teacher is not None and not sharded:
        teacher.to("cpu")
    return {"history": history, "best_epoch": best["epoch"], "steps_per_epoch": steps_per_epoch}


def _hidden_dims(model) -> list[int]:
    """The width of every hidden state a model returns (embeddings, then each layer)."""
    from compress.tasks.causal_lm.models import count_layers

    width = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    return [width] * (count_layers(model) + 1)


def _data_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the target positions (a prompt's tokens are not predicted); 0 with none."""
    if not mask.any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.masked_fill(~mask, -100).flatten())


def _step_loss(trained, model, batch, mask, block_indices, teacher, distill, cache, projections) -> torch.Tensor:
    """The batch's loss through `trained` (the student, or its DDP wrapper); `model` samples on-policy batches."""
    inputs, labels = batch[:, :-1], batch[:, 1:]
    if distill is None:
        return _data_loss(trained(input_ids=inputs).logits, labels, mask)
    on_policy = distill.on_policy > 0 and random.random() < distill.on_policy
    if on_policy:  # the student continues each prompt; only the continuation is distilled, no data CE
        inputs, mask = _student_samples(model, inputs, mask)
    wants_hidden = distill.hidden_weight > 0
    out = trained(input_ids=inputs, output_hidden_states=wants_hidden)
    t_hidden = None
    if cache is not None and not on_policy:
        top_i, top_lp = (t.to(out.logits.device) for t in cache.lookup(block_indices))
        kd = lm_losses.forward_kl_topk(out.logits, top_i, top_lp, mask, **distill.params)
    else:
        with torch.no_grad():
            t_out = teacher(input_ids=inputs, output_hidden_states=wants_hidden)
        t_hidden = t_out.hidden_states if wants_hidden else None
        kd = lm_losses.lm_distill_loss(distill.loss, out.logits, t_out.logits, mask, **distill.params)
    loss = distill.alpha * kd
    if not on_policy and distill.alpha < 1:
        loss = loss + (1 - distill.alpha) * _data_loss(out.logits, labels, mask)
    if wants_hidden:
        if t_hidden is None:
            with torch.no_grad():
                t_hidden = teacher(input_ids=inputs, output_hidden_states=True).hidden_states
        loss = loss + distill.hidden_weight * lm_losses.hidden_state_loss(
            list(out.hidden_states), list(t_hidden), distill.layer_map, mask, kind=distill.hidden_kind,
            projections=projections)
    return loss


def prompt_lengths(mask: torch.Tensor) -> list[int]:
    """Per row, the tokens the student is given before it samples: up to the first response (its first target
    position that follows a non-target one: prompt/response data, GKD's setting), else the first half (plain
    text, every position a target, or a row with no prompt that ends before a response)."""
    lengths = []
    half = mask.shape[1] // 2
    for row in mask:
        starts = torch.nonzero(row[1:] & ~row[:-1]).flatten()
        # a target at position i predicts token i + 1: the response's first token follows the prompt's last
        lengths.append(int(starts[0]) + 2 if len(starts) and int(starts[0]) + 2 < mask.shape[1] else half)
    return lengths


def _student_samples(model, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's prompt (prompt_lengths) continued to the block's end by sampling the student; mask: the
    positions whose next token was sampled. Rows with the same prompt length are sampled together."""
    lengths = prompt_lengths(mask)
    width = inputs.shape[1]
    sampled = inputs.clone()
    sampled_mask = torch.zeros_like(mask, dtype=torch.bool)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for length in sorted(set(lengths)):
            rows = [i for i, n in enumerate(lengths) if n == length]
            prompt = inputs[rows, :length]
            out = model.generate(prompt, max_new_tokens=width - length, do_sample=True, top_k=0, temperature=1.0,
                                 min_new_tokens=width - length, pad_token_id=0, attention_mask=torch.ones_like(prompt))
            sampled[rows] = out[:, :width]
            sampled_mask[rows, length - 1:-1] = True
    model.train(was_training)
    return sampled, sampled_mask


def _checkpoint(folder, model, optimizer, schedule, projections, history, best) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "projections": projections.state_dict() if projections is not None else None}
    torch.save(state, folder / "last.pt.tmp")
    (folder / "last.pt.tmp").replace(folder / "last.pt")
    (folder / "history.json").write_text(json.dumps({"history": history, "best": best}))


def _resume(folder, model, optimizer, schedule, projections):
    if not (folder / "last.pt").is_file() or not (folder / "history.json").is_file():
        return [], 0, None
    state = torch.load(folder / "last.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if projections is not None and state["projections"] is not None:
        projections.load_state_dict(state["projections"])
    saved = json.loads((folder / "history.json").read_text())
    return saved["history"], len(saved["history"]), saved["best"]
