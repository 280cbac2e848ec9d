"""No task branches outside the task packages: a task decides what differs, the shared code asks it.

Read with `ast`: outside compress/tasks/ and the device runner's per-task modules, no code names
`is_text` or `text_spec`, compares anything with a task's name, or uses `isinstance(..., Mapping)`
to tell inputs apart (compress/tasks/inputs.py is the one place that does).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = {"image-classification", "text-classification", "causal-lm", "object-detection"}
BANNED_NAMES = {"is_text", "text_spec", "TextClassification", "ImageClassification"}
# The device runner's pre- and post-processing, one torch-free module per task.
RUNNER_TASK_MODULES = {"preprocess.py", "preprocess_text.py"}


def exempt(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return parts[:2] == ("compress", "tasks") or (parts[:2] == ("deploy", "runner") and parts[-1] in RUNNER_TASK_MODULES)


def _names_mapping(node: ast.AST) -> bool:
    if isinstance(node, ast.Tuple):
        return any(_names_mapping(element) for element in node.elts)
    return (isinstance(node, ast.Name) and node.id == "Mapping") or (
        isinstance(node, ast.Attribute) and node.attr == "Mapping")


def _task_name_constants(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value in TASK_NAMES for n in ast.walk(node))


def branches_in(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, what) for each task branch in one file."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Name) and node.id in BANNED_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in BANNED_NAMES:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in BANNED_NAMES:
            found.append((node.lineno, f"def {node.name}"))
        elif isinstance(node, ast.alias) and (node.asname or node.name).split(".")[-1] in BANNED_NAMES:
            found.append((getattr(node, "lineno", 0), f"import {node.name}"))
        elif isinstance(node, ast.Compare) and any(_task_name_constants(n) for n in [node.left, *node.comparators]):
            found.append((node.lineno, "comparison with a task name"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
              and len(node.args) == 2 and _names_mapping(node.args[1])):
            found.append((node.lineno, "isinstance(..., Mapping)"))
    return found


def task_branches(root: Path = ROOT) -> list[str]:
    problems = []
    for package in ("compress", "deploy"):
        for path in sorted((root / package).rglob("*.py")):
            if exempt(path, root):
                continue
            for line, what in branches_in(path.read_text(), str(path)):
                problems.append(f"{path.relative_to(root)}:{line}: {what}")
    return problems


def test_no_task_branches_outside_the_task_packages():
    problems = task_branches()
    assert not problems, "task branches outside compress/tasks (ask the task instead):\n" + "\n".join(problems)


def test_a_planted_branch_is_named_with_its_file_and_line(tmp_path):
    for package in ("compress", "deploy"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / "compress" / "stages" / "export.py"
    lines = planted.read_text().splitlines()
    lines += ["", "", "def planted(cfg):", "    if cfg.data.is_text:", "        return 1"]
    planted.write_text("\n".join(lines) + "\n")
    assert f"compress/stages/export.py:{len(lines) - 1}: .is_text" in task_branches(tmp_path)


def test_each_kind_of_branch_is_seen():
    source = "\n".join([
        "from compress.tasks import TextClassification",
        "if task.name == 'text-classification': pass",
        "if isinstance(x, (dict, typing.Mapping)): pass",
        "spec = data.text_spec",
        "x = 'text-classification'",  # a name alone is no branch
    ])
    assert [line for line, _ in branches_in(source, "planted.py")] == [1, 2, 3, 4]
