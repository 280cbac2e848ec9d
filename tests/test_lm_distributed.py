"""Causal LM distillation on several ranks: each rank's fixed share of the blocks, per-rank teacher-cache shards,
and under torchrun (gloo, 2 CPU processes) the student under DDP with the teacher sharded by FSDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from compress.tasks.causal_lm import lm_sharding, token_losses
from compress.tasks.causal_lm.lm_fit import TeacherCache
from compress.tasks.causal_lm.models import build_lm
from test_lm_pipeline import lm_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("count,size", [(10, 1), (10, 2), (11, 2), (7, 3)])
def test_each_rank_reads_a_fixed_share_of_equal_size(count, size):
    shares = [lm_sharding.rank_blocks(count, rank, size) for rank in range(size)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == count // size
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(count - count % size))  # disjoint, and all but the remainder


def test_a_ranks_teacher_cache_holds_the_top_k_of_its_own_blocks(tmp_path):
    torch.manual_seed(0)
    teacher = build_lm("hf-config:llama", {"layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1}, 200, 64).eval()
    blocks = [torch.randint(0, 200, (17,)) for _ in range(9)]
    mine = lm_sharding.rank_blocks(len(blocks), 1, 2)  # rank 1 of 2: blocks 1, 3, 5, 7
    cache = TeacherCache(tmp_path / "rank-1-of-2", mine, per_shard=3)
    cache.build(teacher, blocks, 5, 2, lambda _: None)
    assert json.loads((tmp_path / "rank-1-of-2" / "done.json").read_text())["blocks"] == 4
    assert len(list((tmp_path / "rank-1-of-2").glob("shard_*.lp.npy"))) == 2  # 3 + 1 blocks
    indices, logprobs = cache.lookup([7, 1])
    with torch.no_grad():
        expected = token_losses.topk_teacher(teacher(input_ids=torch.stack([blocks[7], blocks[1]])[:, :-1]).logits, 5)
    assert torch.equal(indices, expected[0].long())
    torch.testing.assert_close(logprobs, expected[1].float(), atol=1e-2, rtol=1e-3)  # stored as float16
    with pytest.raises(KeyError):
        cache.lookup([2])  # rank 0's block: not in this rank's shards


def test_shard_teacher_in_one_process_says_so_and_a_bad_value_is_one_line(tmp_path, capsys):
    from compress.cli import main

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(lm_config(**{"stages.distill.shard_teacher": "sometimes"})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pipeline.yaml" in err and "stages.distill.shard_teacher" in err, err


@pytest.mark.slow
def test_two_ranks_distil_with_the_teacher_sharded_by_fsdp(tmp_path):
    """Two gloo ranks: the FSDP teacher's logits are the whole teacher's, each rank holds about half of it; then a
    pipeline's baseline and distill train on both ranks (top-k cache shards per rank, hidden-state KD through the
    sharded teacher) and rank 0 alone writes the run."""
    config = lm_config(**{"stages.distill": {"epochs": 2, "batch_size": 8, "lr": 0.003, "loss": "forward_kl",
                                             "teacher_top_k": 8, "shard_teacher": True, "eval_blocks": 4,
                                             "hidden": {"layer_map": [[1, 2]]}},
                          "stages.baseline": {"epochs": 1}})
    for stage in ("export", "build", "benchmark", "report"):
        config["stages"].pop(stage)
    config.pop("gates")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "fsdp_teacher_ranks.py"), str(path), str(run_dir)]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[:4000]
    ranks = sorted((json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("RANK ")),
                   key=lambda seen: seen["rank"])
    assert [seen["rank"] for seen in ranks] == [0, 1] and all(seen["code"] == 0 for seen in ranks)
    for seen in ranks:
        assert seen["max_abs_diff"] < 1e-5
        assert seen["local"] < 0.6 * seen["total"]
    assert sum(seen["local"] for seen in ranks) == ranks[0]["total"]
    assert result.stdout.count("run dir:") == 1  # rank 1 reports nothing
    assert "teacher sharded by FSDP over 2 ranks" in result.stdout
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    assert {"teacher", "baseline", "distill"} <= set(stages)
    assert {entry["status"] for entry in stages.values()} == {"done"}
    assert "teacher cache (rank-0-of-2): top-8 of" in result.stdout
    training = run_dir / "stages" / "distill" / "training"
    assert len(json.loads((training / "history.json").read_text())["history"]) == 2
    for rank in (0, 1):
        done = json.loads((training / "teacher_cache" / f"rank-{rank}-of-2" / "done.json").read_text())
        assert done["k"] == 8 and done["blocks"] > 0
    outputs = stages["distill"]["outputs"]
    assert outputs["summary"]["perplexity"] > 1 and (run_dir / outputs["model"] / "config.json").is_file()
