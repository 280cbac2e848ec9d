"""How fast a generator decodes, timed the same way on the host (the benchmark stage) and on a device (bench).

`time_generation`: batch-1 time to first token and decode tokens/s, from each token's arrival
(GreedyGenerator.token_times); `time_batch`: prompts of one length decoded together, tokens/s with and without
the first step. Medians over rounds, after untimed warm-up rounds. Python 3.8 and numpy, as generation.py.
"""

from __future__ import annotations

import statistics
import time
from typing import Dict, Optional, Sequence

import numpy as np

try:  # on the host: the deploy.runner package
    from .generation import GreedyGenerator
except ImportError:  # on the device: loaded from the release folder
    from generation import GreedyGenerator


def time_generation(generator: GreedyGenerator, prompt_ids: Sequence[int], max_new_tokens: int,
                    rounds: int = 5, warmup: int = 1, eos_id: Optional[int] = None) -> Dict[str, object]:
    """Batch-1 latency, medians over `rounds` (after `warmup` untimed ones).

    time_to_first_token_s: from the call to the first new token (prefill and the first token's pick);
    decode_tokens_per_s: the tokens after the first over their time (None when a round made only one);
    new_tokens: tokens made in the last round (fewer than max_new_tokens where an eos came first).
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    for _ in range(warmup):
        generator.generate(prompt_ids, max_new_tokens, eos_id)
    firsts, rates, totals = [], [], []
    count = 0
    for _ in range(rounds):
        _tokens, start, times = generator.token_times(prompt_ids, max_new_tokens, eos_id)
        if not times:
            raise ValueError("no token generated (max_new_tokens < 1)")
        first, last, count = times[0], times[-1], len(times)
        firsts.append(first - start)
        totals.append(last - start)
        if count > 1 and last > first:
            rates.append((count - 1) / (last - first))
    return {"backend": generator.backend, "prompt_tokens": len(prompt_ids), "new_tokens": count,
            "rounds": rounds, "time_to_first_token_s": statistics.median(firsts),
            "decode_tokens_per_s": statistics.median(rates) if len(rates) == rounds else None,
            "total_s": statistics.median(totals)}


def time_batch(generator: GreedyGenerator, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               rounds: int = 5, warmup: int = 1, eos_id: Optional[int] = None) -> Dict[str, object]:
    """Batch throughput, medians over `rounds`: prompts of one length decoded together.

    tokens_per_s: all new tokens of all rows over the whole call (prefill included);
    decode_tokens_per_s: the tokens after the first step over the time after it (None if one step);
    new_tokens: the rows' new tokens in the last round, each row counted up to its eos.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    for _ in range(warmup):
        generator.generate_batch(prompts, max_new_tokens, eos_id)
    stop = generator._stop_ids(eos_id)
    rates, decode_rates, totals = [], [], []
    made = 0
    for _ in range(rounds):
        ended = np.zeros(len(prompts), dtype=bool)
        made = first_step = 0
        start = time.perf_counter()
        first = last = None
        for tokens in generator.stream_batch(prompts, max_new_tokens, eos_id):
            last = time.perf_counter()
            live = int((~ended).sum())
            made += live
            if first is None:
                first, first_step = last, live
            ended |= np.isin(tokens, list(stop)) if stop else False
        if first is None:
            raise ValueError("no token generated (max_new_tokens < 1)")
        totals.append(last - start)
        rates.append(made / (last - start))
        if made > first_step and last > first:
            decode_rates.append((made - first_step) / (last - first))
    return {"backend": generator.backend, "batch": len(prompts), "prompt_tokens": len(prompts[0]),
            "new_tokens": made, "rounds": rounds, "tokens_per_s": statistics.median(rates),
            "decode_tokens_per_s": statistics.median(decode_rates) if len(decode_rates) == rounds else None,
            "total_s": statistics.median(totals)}
