"""One package per task: everything that differs between image, text (and later language-model and
detection) work lives in the task's package, behind the interface in `task.Task`.

- `task.py`: the Task interface (members, one docstring each) and what every classification task shares.
- `inputs.py`: the two forms a batch takes (one array, named arrays), for the shared libraries.
- `registry.py`: the known tasks, in the order they claim a data section; `task_for(pipeline)`.
- `image_classification/`, `text_classification/`: today's tasks.

This package imports nothing on import, so that the shared libraries can use `inputs` without
pulling in every task.
"""
