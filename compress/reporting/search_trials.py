"""The distill stage's search in the report: every trial, the one chosen, and what the search does to the verdict.

A search picks the best of N trained students, so two things can flatter KD and both are said where
the KD gain is shown: a best-of-N KD student against one run of the student alone (the baseline
gets a search of its own unless `stages.baseline.search: false`), and a trial chosen on the same
split the verdict is judged on (its top-1 is then the maximum of N noisy draws).
"""

from __future__ import annotations

from typing import Any

from compress.reporting.fmt import num, pct, table

# Settings in the order a reader compares them; a setting not named here follows, sorted.
PARAM_ORDER = ("loss", "temperature", "alpha", "lr", "label_smoothing")
FINISHED = ("complete", "stopped by the budget")
STATE_MARKERS = {"complete": "o", "pruned": "v", "stopped by the budget": "s"}  # any other state: "x"
SIDE_COLORS = {"kd": "#2563eb", "alone": "#ea580c"}
SIDE_NAMES = {"kd": "student with KD", "alone": "student alone"}


def trials_of(search: Any) -> list[dict[str, Any]]:
    """The trial records of a search, skipping anything that is not one (a hand-edited or torn record)."""
    if not isinstance(search, dict):
        return []
    return [t for t in search.get("trials") or [] if isinstance(t, dict)]


def configurations(search: Any) -> int:
    """How many settings a side trained: 1 without a search; an interrupted trial that resumed counts once."""
    if not isinstance(search, dict):
        return 1
    run = search.get("trials_run")
    if isinstance(run, int):
        return run
    return sum(t.get("state") != "interrupted" for t in trials_of(search))


def param_columns(trials: list[dict[str, Any]]) -> list[str]:
    """The settings any trial tried, known ones first: the KD search and the baseline's search share one table shape."""
    names = {name for t in trials for name in (t.get("params") or {})}
    return [n for n in PARAM_ORDER if n in names] + sorted(names - set(PARAM_ORDER))


def side(search: Any) -> dict[str, Any] | None:
    """One side's search as the report shows it; None when that side did not search."""
    if not isinstance(search, dict):
        return None
    trials = trials_of(search)
    chosen = search.get("chosen") if isinstance(search.get("chosen"), dict) else {}
    return {"trials": trials, "columns": param_columns(trials), "chosen": chosen.get("number"),
            "chosen_val_top1": chosen.get("val_top1"), "trials_run": configurations(search),
            "trials_requested": search.get("trials_requested"), "seconds": search.get("seconds"),
            "budget_seconds": search.get("budget_seconds"), "sampler": search.get("sampler"),
            "pruner": search.get("pruner"), "chosen_on": search.get("chosen_on") or "val",
            "complete": sum(t.get("state") in FINISHED for t in trials)}


def split_name(split: str) -> str:
    return "validation" if split == "val" else split


def how_it_ran(s: dict[str, Any]) -> str:
    """N of M requested trials in S s of a B s budget, with the sampler, pruner and the split that chose."""
    finished = "" if s["complete"] else " (none finished: no trial could be chosen)"
    return (f"{s['trials_run']} of {num(s['trials_requested'], 'd')} requested trials ran in "
            f"{num(s['seconds'], '.0f')} s of a {num(s['budget_seconds'], '.0f')} s budget{finished}; sampler: "
            f"{s['sampler'] or '-'}; pruner: {s['pruner'] or '-'}; the trial was chosen on the "
            f"{split_name(s['chosen_on'])} split.")


def split_note(s: dict[str, Any], split: str) -> str:
    """Whether the verdict's split is the one that chose the trial: if so, the chosen top-1 is a best of N."""
    if split != s["chosen_on"]:
        return (f"The verdict above is judged on the {split} split, which chose no trial: the search could not "
                "flatter itself.")
    return (f"The verdict above is judged on the {split} split, the split that chose the trial: the chosen "
            f"trial's val top-1 ({pct(s['chosen_val_top1'])}) is optimistic, the best of {s['trials_run']} tries "
            "on the same images. Hold out a test split (data.test_fraction) for an unflattered verdict.")


def bias_note(kd_tried: int, pipeline: dict[str, Any]) -> str:
    """Said plainly when only KD searched: its best of N against a single baseline run favours KD."""
    baseline = (pipeline.get("stages") or {}).get("baseline") or {}
    if baseline.get("search") is False:
        why, fix = " (stages.baseline.search is false)", "remove stages.baseline.search: false"
    else:
        why, fix = "", "keep stages.baseline.search unset (the baseline searches whenever stages.distill.search is set)"
    return (f"The comparison is biased toward KD: the best of {kd_tried} KD configurations against one run of the "
            f"student alone{why}. For a fair verdict, give the student alone the same search: {fix}.")


def search_section(distill: dict[str, Any], baseline: dict[str, Any], split: str,
                   pipeline: dict[str, Any]) -> dict[str, Any] | None:
    """The search subsection of What distillation bought; None when the KD student was not searched."""
    kd = side(distill.get("search"))
    if kd is None:
        return None
    alone = side(baseline.get("search"))
    tried = {"kd": kd["trials_run"], "alone": alone["trials_run"] if alone else 1}
    configurations_line = (f"Configurations tried by the search: {tried['kd']} for the student with KD, {tried['alone']} for the "
                           "student alone" + (" (each side the best of its own search)." if alone else "."))
    return {"kd": kd, "alone": alone, "how": how_it_ran(kd), "split_note": split_note(kd, split),
            "alone_how": how_it_ran(alone) if alone else None,
            "bias": None if alone else bias_note(tried["kd"], pipeline),
            "alone_missing": None if alone else "not searched: one run with its configured settings (the bias is "
                                                "said above, under the KD gain).",
            "configurations": configurations_line}


def param_cell(value: Any) -> str:
    return num(value, ".3g") if isinstance(value, float) else num(value)


def trial_headers(s: dict[str, Any]) -> list[str]:
    return ["trial", *(c.replace("_", " ") for c in s["columns"]), "state", "epochs", "val top-1", "seconds"]


def trial_cells(t: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """One trial as table cells ('-' for what it never recorded); the chosen one is marked."""
    params = t.get("params") if isinstance(t.get("params"), dict) else {}
    state = str(t.get("state") or "-") + (f" (resumes {t['resumes']})" if t.get("resumes") is not None else "")
    chosen = t.get("number") is not None and t.get("number") == s["chosen"]
    return [f"{num(t.get('number'), 'd')}" + (" (chosen)" if chosen else ""),
            *(param_cell(params.get(c)) for c in s["columns"]), state, num(t.get("epochs"), "d"),
            pct(t.get("val_top1")), num(t.get("seconds"), ".1f")]


def trials_table(s: dict[str, Any]) -> list[str]:
    rows = [trial_cells(t, s) for t in s["trials"]]
    rows = [[f"**{c}**" for c in row] if row[0].endswith("(chosen)") else row for row in rows]
    return table(trial_headers(s), rows, "r" + "l" * len(s["columns"]) + "lrrr")


def search_markdown(section: dict[str, Any] | None) -> list[str]:
    """### Search: how it ran, the trials of each side, or the bias when only KD searched."""
    if not section:
        return []
    out = ["### Search", "", f"{section['how']} {section['split_note']}", "", "Student with KD:", ""]
    out += [*trials_table(section["kd"]), ""]
    if section["alone"]:
        out += [f"Student alone: {section['alone_how']}", "", *trials_table(section["alone"]), ""]
    else:
        out += [f"Student alone: {section['alone_missing']}", ""]
    out += ["The trials' val top-1 is charted in report.html.", ""]
    return out


def plotted(s: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Trials that can be drawn: a number and a val top-1."""
    if not s:
        return []
    return [t for t in s["trials"] if isinstance(t.get("number"), int) and isinstance(t.get("val_top1"), (int, float))]


def trials_figure(section: dict[str, Any] | None, plt) -> Any:
    """Val top-1 per trial number, marker by state, the chosen trials ringed; None when no trial has a top-1."""
    if not section or not (plotted(section["kd"]) or plotted(section["alone"])):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name in ("kd", "alone"):
        s = section[name]
        for t in plotted(s):
            ax.scatter(t["number"], t["val_top1"] * 100, color=SIDE_COLORS[name], s=46, zorder=3,
                       marker=STATE_MARKERS.get(t.get("state"), "x"))
            if t["number"] == s["chosen"]:
                ax.scatter(t["number"], t["val_top1"] * 100, s=220, facecolor="none", edgecolor="#111827",
                           linewidth=1.5, zorder=4)
        if plotted(s):
            ax.scatter([], [], color=SIDE_COLORS[name], marker="o", label=SIDE_NAMES[name])
    drawn = {t.get("state") for name in ("kd", "alone") for t in plotted(section[name])}
    others = sorted(str(state) for state in drawn - set(STATE_MARKERS))
    shown = [(state, marker) for state, marker in STATE_MARKERS.items() if state in drawn]
    for state, marker in shown + ([(" or ".join(others), "x")] if others else []):
        ax.scatter([], [], color="#6b7280", marker=marker, label=state)
    ax.scatter([], [], s=120, facecolor="none", edgecolor="#111827", label="chosen")
    ax.set_xlabel("trial number")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Search trials (pruned and stopped trials: their best val top-1 before they stopped)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig
