"""The tasks this toolchain knows, in the order they claim a data section when `task:` is unset.

A new task is one package under compress/tasks and one line here.
"""

from __future__ import annotations

from compress.config import DataConfig, PipelineConfig
from compress.tasks.task import Task
from compress.tasks.causal_lm import CausalLM
from compress.tasks.image_classification import ImageClassification
from compress.tasks.object_detection import ObjectDetection
from compress.tasks.text_classification import TextClassification

# Most specific first: image classification claims every source no other task does.
TASKS: dict[str, type[Task]] = {task.name: task for task in (CausalLM, ObjectDetection, TextClassification,
                                                                  ImageClassification)}


def task_for(pipeline: PipelineConfig) -> Task:
    """The task of a loaded pipeline (compress.runner resolved its name), bound to its data section."""
    return task_named(pipeline.task_name, pipeline.data)


def task_named(name: str | None, data: DataConfig) -> Task:
    """Task `name` bound to `data`; unset (a run recorded before `task:`, a config made in code), the task that
    claims the data."""
    if name is None:
        name = next(n for n, task in TASKS.items() if task.claims(data))
    return TASKS[name](data)
