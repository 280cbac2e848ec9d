"""Charts of the report as PNG bytes (matplotlib, Agg: no display needed), embedded as data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.transforms  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from compress.reporting.quantization import sensitivity_figure  # noqa: E402
from compress.reporting.search_trials import trials_figure  # noqa: E402
from compress.reporting.sequence import latency_by_length_figure  # noqa: E402

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
MARKERS = {"teacher": "*", "student": "o"}
META_KEYS = ("epoch", "loss", "lr", "val_top1", "seconds", "val_loss")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _grid(ax) -> None:
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.08)


def _color(backends: list[str], backend: str) -> str:
    return PALETTE[backends.index(backend) % len(PALETTE)]


# Where a point's label may go, in points from the point, tried in order: beside it first, then further away.
LABEL_SPOTS = [(dx, dy) for dy in (4, -11, 13, -20, 22, -29, 31, -38) for dx in (7, -7)]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def place_labels(ax, points: list[tuple[float, float, str]], ringed: str | None = None) -> list:
    """Label every point where the label overlaps no other label, marker or the `ringed` point's ring.

    Artifacts of one model often share a top-1 and sit close in latency, so fixed offsets pile their
    labels up; this tries LABEL_SPOTS in display space and keeps the first free one (or, when all are
    taken, the one that overlaps least).
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    markers, rings = [], []
    for x, y, text in points:
        px, py = to_display((x, y))
        markers.append(matplotlib.transforms.Bbox([[px - 5, py - 5], [px + 5, py + 5]]))
        if text == ringed:
            rings.append(matplotlib.transforms.Bbox([[px - 13, py - 13], [px + 13, py + 13]]))
    frame = ax.get_window_extent(renderer)
    placed, labels = [], []
    for i, (x, y, text) in enumerate(points):
        obstacles = placed + rings + [m for j, m in enumerate(markers) if j != i]
        best = None
        for dx, dy in LABEL_SPOTS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7.5,
                                color="#374151", ha="left" if dx > 0 else "right", va="bottom")
            box = label.get_window_extent(renderer)
            cost = sum(_overlap(box, o) for o in obstacles) * 10 + (0 if frame.contains(box.x0, box.y0)
                                                                    and frame.contains(box.x1, box.y1) else 1)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        placed.append(best[2])
        labels.append(best[1])
    return labels


def tradeoff_figure(report: dict[str, Any]):
    """Latency vs top-1 of every artifact at the first batch: ± of a rerun across, the 95% interval of top-1 up."""
    batch = report["pareto_batch"]
    rows = [r for r in report["rows"] if r["batch_size"] == batch]
    if not rows:
        return None
    backends = sorted({r["backend"] for r in rows})
    recommended = (report["headline"] or {}).get("recommended")
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    points = []
    for row in sorted(rows, key=lambda r: r["latency_ms"]["p50"]):
        ident = f"{row['model']}.{row['backend']}.{row['precision']}"
        x, y = row["latency_ms"]["p50"], row["accuracy"]["top1"] * 100
        color = _color(backends, row["backend"])
        spread = row["latency_ms"].get("p50_spread")
        interval = row.get("top1_interval")
        if spread or interval:  # how far a rerun's p50 may land (clipped above zero on the log axis); top-1's 95%
            ax.errorbar(x, y, xerr=[[min(spread, 0.9 * x)], [spread]] if spread else None,
                        # clipped at 0: at top-1 1.0 the interval's end is 100 less a rounding error
                        yerr=[[max(0.0, y - interval[0] * 100)], [max(0.0, interval[1] * 100 - y)]] if interval else None,
                        fmt="none", ecolor=color, elinewidth=1, capsize=2, alpha=0.55, zorder=2)
        ax.scatter(x, y, s=140 if row["model"] == "teacher" else 70, color=color,
                   marker=MARKERS.get(row["model"], "s"), zorder=3, edgecolor="white", linewidth=0.8)
        if ident == recommended:
            ax.scatter(x, y, s=320, facecolor="none", edgecolor="#111827", linewidth=1.6, zorder=4)
        points.append((x, y, ident))
    front = [r for ident in report["pareto"] for r in rows
             if f"{r['model']}.{r['backend']}.{r['precision']}" == ident]
    if front:
        ax.scatter([r["latency_ms"]["p50"] for r in front], [r["accuracy"]["top1"] * 100 for r in front], s=14,
                   color="#111827", zorder=5, label="on the Pareto front")
        ax.step([r["latency_ms"]["p50"] for r in front], [r["accuracy"]["top1"] * 100 for r in front],
                where="post", color="#6b7280", linestyle="--", linewidth=1.2, label="Pareto front", zorder=2)
    drop = report["gate_limits"].get("max_accuracy_drop")
    teacher_top1 = (report["headline"] or {}).get("teacher_top1")
    if drop is not None and teacher_top1 is not None:
        ax.axhline((teacher_top1 - drop) * 100, color="#dc2626", linestyle=":", linewidth=1.2,
                   label=f"accuracy gate (-{drop * 100:g} pts)")
    for backend in backends:
        ax.scatter([], [], color=_color(backends, backend), label=backend)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))  # ticks even when the artifacts span < 10x
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale; bars: ± of a rerun, 95% interval of top-1)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Latency vs accuracy (up and to the left is better)")
    _grid(ax)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: never on a label
    fig.canvas.draw()  # the scales and limits are final: labels can be placed in display space
    place_labels(ax, points, recommended)
    return fig


def latency_vs_accuracy(report: dict[str, Any]) -> bytes | None:
    fig = tradeoff_figure(report)
    return _png(fig) if fig is not None else None


def latency_per_batch(report: dict[str, Any]) -> bytes | None:
    table = report["latency_by_batch"]
    if not table or len(report["batches"]) < 1:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (ident, by_batch) in enumerate(sorted(table.items())):
        batches = sorted(by_batch)
        style = dict(color=PALETTE[i % len(PALETTE)], marker=MARKERS.get(ident.split(".")[0], "s"),
                     linestyle="-" if ident.endswith("fp32") else "--", label=ident)
        p50 = [by_batch[b]["p50"] for b in batches]
        upper = [max(0.0, (by_batch[b].get("p90") or p) - p) for b, p in zip(batches, p50)]
        left.errorbar(batches, p50, yerr=[[0.0] * len(p50), upper], capsize=3, **style)
        right.plot(batches, [by_batch[b]["throughput_per_s"] for b in batches], **style)
    for ax, label in ((left, "p50 latency (ms; bar up to p90)"), (right, "throughput (samples/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(report["batches"], [str(b) for b in report["batches"]])
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        _grid(ax)
    right.legend(fontsize=7.5, loc="best")
    fig.suptitle("Latency and throughput per batch size")
    return _png(fig)


def latency_by_length(report: dict[str, Any]) -> bytes | None:
    fig = latency_by_length_figure(report.get("sequence"), plt)
    return _png(fig) if fig is not None else None


def layer_sensitivity(report: dict[str, Any]) -> bytes | None:
    fig = sensitivity_figure(report.get("accuracy_control"), plt)
    return _png(fig) if fig is not None else None


def search_trials(report: dict[str, Any]) -> bytes | None:
    fig = trials_figure((report["kd_gain"] or {}).get("search"), plt)
    return _png(fig) if fig is not None else None


def training_curves(metrics: dict[str, list[dict]]) -> bytes | None:
    if not metrics:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (stage, records) in enumerate(metrics.items()):
        epochs = [r["epoch"] for r in records]
        color = PALETTE[i % len(PALETTE)]
        if any("val_top1" in r for r in records):
            left.plot(epochs, [r.get("val_top1", float("nan")) * 100 for r in records], marker=".", color=color,
                      label=stage)
        if any("loss" in r for r in records):
            right.plot(epochs, [r.get("loss", float("nan")) for r in records], marker=".", color=color,
                       label=f"{stage} loss")
            parts = [k for k, v in records[-1].items() if k not in META_KEYS and isinstance(v, (int, float))][:4]
            for j, part in enumerate(parts):
                right.plot(epochs, [r.get(part, float("nan")) for r in records], color=color, alpha=0.5,
                           linestyle=[":", "-.", "--"][j % 3], label=f"{stage} {part}")
    left.set_xlabel("epoch")
    left.set_ylabel("val top-1 (%)")
    left.set_title("Validation accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("training loss")
    if all(y > 0 for line in right.get_lines() for y in line.get_ydata() if y == y):
        right.set_yscale("log")
    right.set_title("Training loss (total and parts)")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _grid(ax)
        ax.legend(fontsize=7.5)
    return _png(fig)


def per_class_accuracy(per_class: dict[str, Any] | None, split_name: str = "validation") -> bytes | None:
    if not per_class:
        return None
    import numpy as np

    classes = per_class["classes"]
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(classes) + 2), 3.4))
    ax.bar(x - 0.2, [(v or 0) * 100 for v in per_class["teacher"]], width=0.4, color="#9ca3af", label="teacher")
    ax.bar(x + 0.2, [(v or 0) * 100 for v in per_class["recommended"]], width=0.4, color=PALETTE[0],
           label="recommended")
    ax.set_xticks(x, classes, rotation=0 if len(classes) <= 20 else 90, fontsize=8)
    low = min([v for v in per_class["teacher"] + per_class["recommended"] if v is not None] or [0])
    ax.set_ylim(max(0, low * 100 - 5), 100.5)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Per-class accuracy on the {split_name} split")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.25)
    return _png(fig)


def render_charts(report: dict[str, Any], metrics: dict[str, list[dict]]) -> dict[str, bytes]:
    charts = {
        "latency_vs_accuracy": latency_vs_accuracy(report),
        "latency_per_batch": latency_per_batch(report),
        "latency_by_length": latency_by_length(report),
        "layer_sensitivity": layer_sensitivity(report),
        "search_trials": search_trials(report),
        "training_curves": training_curves(metrics),
        "per_class": per_class_accuracy(report["per_class"], report["accuracy"]["split_name"]),
    }
    return {name: png for name, png in charts.items() if png}
