"""Number formatting shared by the markdown, the HTML template and the CLI tables."""

from __future__ import annotations

from typing import Any


def num(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, (int, float)):
        return unsigned_zero(format(value, spec), spec) + suffix
    return str(value)


def unsigned_zero(text: str, spec: str) -> str:
    """'-0', '-0.00' (a tiny negative, or IEEE's -0.0) read as zero: no sign, or '+' when the spec asks for one."""
    mantissa = text.split("e")[0]
    if text.startswith("-") and not any(digit in mantissa for digit in "123456789"):
        return ("+" if "+" in spec else "") + text[1:]
    return text


def pct(value: Any, digits: int = 2) -> str:
    """A fraction (0.9731) as a percentage (97.31%)."""
    return num(None if value is None else value * 100, f".{digits}f", "%")


def pts(value: Any) -> str:
    """Accuracy points with a sign: +0.28 pts."""
    return num(value, "+.2f", " pts")


def pct_interval(interval: Any, digits: int = 1) -> str:
    """A 95% interval of a fraction as percent: '92.3–96.8%', '-' when unknown."""
    if not interval:
        return "-"
    low, high = (num(v * 100, f".{digits}f") for v in interval)
    return f"{low}–{high}%"


def pts_interval(interval: Any) -> str:
    """A 95% interval of a difference of fractions as points: '-1.20 to +3.40 pts', '-' when unknown."""
    if not interval:
        return "-"
    low, high = (num(v * 100, "+.2f") for v in interval)
    return f"{low} to {high} pts"


def times(value: Any) -> str:
    return num(value, ".2f", "x")


def ms(value: Any) -> str:
    if value is None:
        return "-"
    return num(value, ".3f" if value < 10 else ".2f" if value < 100 else ".1f")


def plus_minus(spread: Any) -> str:
    """' ± 0.004' after a p50 when its repeat spread is known, else nothing."""
    return "" if spread is None else f" ± {ms(spread)}"


def count(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(int(value))


def table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> list[str]:
    """A GitHub markdown table; `align` is one char per column, l or r."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def text_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned table for the terminal (numbers right-aligned)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        out = []
        for i, value in enumerate(values):
            numeric = value == "-" or value[:1].isdigit() or value[:1] in "+-." and value[1:2].isdigit()
            out.append(value.rjust(widths[i]) if numeric else value.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def latency_table(rows: list[dict[str, Any]]) -> str:
    """The table `compress benchmark MODEL` prints: one row per backend, precision and batch."""
    return text_table(
        ["backend", "precision", "batch", "p50 ms", "± ms (95%, rerun)", "mean ms", "std ms", "p90 ms",
         "p99 ms", "runs", "samples/s", "memory MB", "size MB"],
        [[r["backend"], r["precision"], r["batch_size"], ms(r["latency_ms"]["p50"]), ms(r["latency_ms"].get("p50_spread")),
          ms(r["latency_ms"]["mean"]), ms(r["latency_ms"]["std"]), ms(r["latency_ms"]["p90"]),
          ms(r["latency_ms"]["p99"]), r["latency_ms"]["runs"],
          num(r["throughput_per_s"], ".1f"), num((r.get("memory") or {}).get("peak_mb"), ".0f"),
          num(r["size_mb"], ".3f")]
         for r in rows])
