"""Text models: latency and tokens/s over the (batch, sequence length) grid the benchmark timed.

A Transformer's cost grows with the text it reads (attention is quadratic in the length), so one
latency at one length says little; the main results are at `data.text.max_length` (the fixed-shape
worst case that gates read), and this section shows how each artifact scales below it.
"""

from __future__ import annotations

from typing import Any

from compress.reporting.fmt import ms, num, table


def sequence_section(results: dict[str, Any]) -> dict[str, Any] | None:
    """{"lengths", "batches", "by_artifact": {id: {"b{batch}@{length}": {p50, tokens_per_s}}}, "main_length"};
    None for an image run."""
    grid = results.get("sequence_grid")
    if not grid:
        return None
    by_artifact: dict[str, dict[str, dict[str, Any]]] = {}
    for row in grid:
        ident = f"{row['model']}.{row['backend']}.{row['precision']}"
        by_artifact.setdefault(ident, {})[f"b{row['batch_size']}@{row['sequence_length']}"] = {
            "p50": row["latency_ms"]["p50"], "tokens_per_s": row.get("tokens_per_s")}
    return {"lengths": sorted({r["sequence_length"] for r in grid}), "batches": sorted({r["batch_size"] for r in grid}),
            "by_artifact": by_artifact, "main_length": results.get("sequence_length")}


def sequence_markdown(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    keys = [f"b{b}@{n}" for b in section["batches"] for n in section["lengths"]]
    out = ["## Latency by sequence length", "",
           f"Main results above are at sequence length {section['main_length']} (data.text.max_length). "
           "p50 ms (tokens/s) per batch size @ sequence length:", ""]
    out += table(["artifact", *keys],
                 [[ident, *(f"{ms(cells.get(k, {}).get('p50'))} ({num(cells.get(k, {}).get('tokens_per_s'), '.0f')})"
                            for k in keys)] for ident, cells in section["by_artifact"].items()], "l" + "r" * len(keys))
    out.append("")
    return out


def latency_by_length_figure(section: dict[str, Any] | None, plt) -> Any:
    """p50 latency against sequence length, one line per artifact and batch size (None without a grid)."""
    if not section or len(section["lengths"]) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for ident, cells in sorted(section["by_artifact"].items()):
        for batch in section["batches"]:
            points = [(n, cells[f"b{batch}@{n}"]["p50"]) for n in section["lengths"] if f"b{batch}@{n}" in cells]
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if batch == section["batches"][0] else "--",
                        label=f"{ident} b{batch}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(section["lengths"], [str(n) for n in section["lengths"]])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("p50 latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle("Latency by sequence length")
    return fig
