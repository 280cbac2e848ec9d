"""Multi-process runs under torchrun: rank 0 runs the pipeline, the other ranks follow it.

Rank 0 holds the run-dir lock, decides what is cached, writes run.json and every artifact; it tells
the other ranks, stage by stage, what happens (`cached`, `run`, `done`, `failed`, `end`) with
`broadcast_object_list`. A follower runs only the stages marked `distributed` (training, where it
takes its shard of every epoch through DDP) and waits for rank 0 during the others.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from compress.core.errors import StageFailed


def init_from_env() -> bool:
    """Join the torchrun process group (gloo on CPU, NCCL on GPU); False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Followers wait while rank 0 runs single-process stages (teacher training, export, ...).
        dist.init_process_group(backend, timeout=timedelta(hours=6))
    return True


def shutdown() -> None:
    """Leave the process group before the interpreter exits.

    Without this, Gloo's worker threads may still hold work objects with Python references while the
    interpreter is torn down, and a run that finished may still die with SIGABRT.
    """
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class Peers:
    """Rank 0's side: announce each stage's fate to the followers (a no-op when not distributed)."""

    def __init__(self, active: bool):
        self.active = active

    def send(self, kind: str, name: str | None = None, payload: Any = None) -> None:
        if self.active:
            dist.broadcast_object_list([(kind, name, payload)], src=0)


def receive() -> tuple[str, str | None, Any]:
    message = [None]
    dist.broadcast_object_list(message, src=0)
    return message[0]


def follow(runner) -> dict[str, Any]:
    """A follower's whole run: mirror rank 0's decisions, run the distributed stages alongside it."""
    outputs: dict[str, dict[str, Any]] = {}
    while True:
        kind, name, payload = receive()
        if kind == "end":
            return {"stages": {}, "name": runner.pipeline.name, "rank": rank()}
        if kind in ("cached", "done"):
            outputs[name] = payload
        elif kind == "failed":
            raise StageFailed(name, f"failed on rank 0: {payload}")
        elif kind == "run" and runner.runs_on_every_rank(name):
            runner.run_stage_as_follower(name, outputs)
