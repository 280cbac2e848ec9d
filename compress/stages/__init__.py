"""Stage registry, in pipeline order."""

from __future__ import annotations

from compress.stages.base import Stage, StageContext

ORDER = ("teacher", "baseline", "distill", "quantize", "export", "build", "benchmark", "report", "deploy")
STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    if cls.name not in ORDER:
        raise ValueError(f"stage {cls.name} has no place in ORDER")
    STAGES[cls.name] = cls
    ordered = sorted(STAGES.items(), key=lambda item: ORDER.index(item[0]))
    STAGES.clear()
    STAGES.update(ordered)
    return cls


from compress.stages import teacher, baseline, distill, quantize, export, build, benchmark, report, deploy  # noqa: E402,F401,I001

__all__ = ["ORDER", "STAGES", "Stage", "StageContext", "register_stage"]
