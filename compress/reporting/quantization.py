"""Accuracy-controlled quantization: which layers stayed float, why, and what each step bought.

The quantize stage records the search (compress.quantize.accuracy_control) in its outputs; this
section shows the per-layer sensitivity as a chart and lists the layers kept in float, so a reader
can see whether the budget was met by one outlier layer or by giving up on int8 piece by piece.
"""

from __future__ import annotations

from typing import Any

from compress.reporting.fmt import pct, pts, table


def accuracy_control_section(outputs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The quantize stage's accuracy-control record, or None when the run had none."""
    control = (outputs.get("quantize") or {}).get("accuracy_control")
    return control if isinstance(control, dict) and "sensitivity" in control else None


def accuracy_control_markdown(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    verdict = "met" if section["met"] else "**not met**"
    kept = ", ".join(f"`{name}`" for name in section["float_layers"]) or "none"
    out = ["## Accuracy-controlled quantization", "",
           f"Budget: a top-1 drop of at most {section['max_accuracy_drop'] * 100:.2f} pts against the float student "
           f"({pct(section['float_top1'])}); {verdict}. Every layer int8: {pct(section['plain_ptq_top1'])} "
           f"({pts((section['plain_ptq_top1'] - section['float_top1']) * 100)}); result: "
           f"{pct(section['top1'])} ({pts((section['top1'] - section['float_top1']) * 100)}) with {section['int8_layers']} of {section['layers']} layers int8 "
           f"(at most {section['max_float_layers']} back in float).", "",
           f"- Layers kept in float: {kept}.", ""]
    if section["sensitivity"]:
        out += ["Sensitivity: each layer alone in float, the others int8 (share of the all-int8 output error it "
                "removes; most sensitive first):", ""]
        floats = set(section["float_layers"])
        out += table(["layer", "op", "error removed", "output NMSE", "ranking top-1", "kept float"],
                     [[f"`{s['layer']}`", s["op"], f"{s['error_removed']:.1%}", f"{s['output_error']:.2e}",
                       pct(s["ranking_top1"]), "yes" if s["layer"] in floats else ""]
                      for s in section["sensitivity"]], "llrrrl")
        out.append("")
    return out


def sensitivity_figure(section: dict[str, Any] | None, plt) -> Any:
    """Bars of the error each layer removes when kept in float (float layers highlighted); None without a ranking."""
    if not section or not section["sensitivity"]:
        return None
    ranked = section["sensitivity"]
    floats = set(section["float_layers"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(ranked) + 2), 3.6))
    ax.bar(range(len(ranked)), [s["error_removed"] * 100 for s in ranked],
           color=["#dc2626" if s["layer"] in floats else "#2563eb" for s in ranked])
    ax.set_xticks(range(len(ranked)), [s["layer"] for s in ranked], rotation=45 if len(ranked) > 6 else 0,
                  ha="right" if len(ranked) > 6 else "center", fontsize=8)
    ax.set_ylabel("all-int8 output error removed (%)")
    ax.axhline(0, color="#6b7280", linewidth=0.8)
    ax.grid(True, axis="y", alpha=0.25)
    ax.set_title("Per-layer sensitivity to int8 (red: kept in float)")
    fig.tight_layout()
    return fig
