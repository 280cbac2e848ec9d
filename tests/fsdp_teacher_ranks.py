"""Run under torchrun by tests/test_lm_distributed.py: FSDP's sharded teacher computes the unsharded teacher's
logits, then `compress run` distils a causal LM on every rank. Prints one JSON line per rank: what it saw."""

from __future__ import annotations

import json
import sys

import torch

from compress import distributed
from compress.cli import main
from compress.tasks.causal_lm import lm_sharding
from compress.tasks.causal_lm.models import build_lm


def sharded_teacher_check() -> dict:
    torch.manual_seed(0)
    teacher = build_lm("hf-config:llama", {"layers": 3, "hidden": 64, "heads": 4, "kv_heads": 2}, 300, 64).eval()
    tokens = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        whole = teacher(input_ids=tokens).logits
    local, total = lm_sharding.shard_teacher(teacher, torch.device("cpu"))
    with torch.no_grad():
        sharded = teacher(input_ids=tokens).logits
    return {"max_abs_diff": float((sharded - whole).abs().max()), "local": local, "total": total}


if __name__ == "__main__":
    assert distributed.init_from_env()
    seen = {"rank": lm_sharding.world()[0], "world": lm_sharding.world()[1], **sharded_teacher_check()}
    seen["code"] = main(["run", sys.argv[1], "--run-dir", sys.argv[2]])
    print("RANK " + json.dumps(seen), flush=True)
