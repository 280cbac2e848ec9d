"""The layers point one way: every import in compress/ and deploy/, read with `ast`, goes down or sideways.

From the bottom: deploy/runner (ships to the device: imports nothing of ours) and compress/core ->
compress/config (schema only) -> the libraries (data, models, distill, quantize, exporting,
measuring, reporting, distributed, deploy's engines, targets, bundle, release, fleet, triton, and
compress/tasks/inputs.py, the batch forms they pass on) -> the task packages (compress/tasks) ->
compress/stages -> compress/runner -> the command lines. Imports inside functions count too, and so
does any cycle, even between modules of one layer. deploy imports nothing of compress but
compress/core: the deploy stage and the CLI call into deploy, never the other way round.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "deploy")

# (module prefix, layer), most specific prefix first; a module may import only from its layer or below.
LAYERS = [
    ("deploy.runner", 0),
    ("compress.core", 1),
    ("compress.config", 2),
    ("compress.tasks.inputs", 3),
    ("compress.tasks", 4),
    ("compress.stages", 5),
    ("compress.runner", 6),
    ("compress.cli", 7),
    ("compress.__main__", 7),
    ("deploy.cli", 7),
    ("compress", 3),  # every other package of compress/ is a library (the bare package only holds __version__)
    ("deploy", 3),
]
LAYER_NAMES = {0: "device runner", 1: "core", 2: "config", 3: "libraries", 4: "tasks", 5: "stages", 6: "runner",
               7: "command line"}
ENTRY_POINTS = {"__init__", "__main__", "cli", "runner", "config", "distributed"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def layer_of(module: str) -> int:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module}: in no layer")


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported project module) for every import statement, at any depth of the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] not in PACKAGES:
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                found.append((node.lineno, target))
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, list[tuple[int, str]]]]:
    known = project_modules(root)
    return known, {m: imports_of(m, p, known) for m, p in known.items()}


def wrong_way(known: dict[str, Path], graph: dict[str, list[tuple[int, str]]], root: Path = ROOT) -> list[str]:
    problems = []
    for module, edges in graph.items():
        for line, target in edges:
            where = f"{known[module].relative_to(root)}:{line}: {module} imports {target}"
            if layer_of(target) > layer_of(module):
                problems.append(f"{where} ({LAYER_NAMES[layer_of(module)]} may not import "
                                f"{LAYER_NAMES[layer_of(target)]})")
            elif module.startswith("deploy") and target.startswith("compress") and not (
                    target == "compress.core" or target.startswith("compress.core.")):
                problems.append(f"{where} (deploy uses only compress.core)")
            elif module.startswith("deploy.runner") and not target.startswith("deploy.runner"):
                problems.append(f"{where} (the device runner imports nothing of the toolchain)")
    return problems


def cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each as a path round the cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in graph:
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_every_import_points_down_and_deploy_uses_only_core():
    known, graph = import_graph()
    problems = wrong_way(known, graph)
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def shortest_cycle(graph: dict[str, list[tuple[int, str]]], members: list[str]) -> str:
    """One concrete cycle inside a strongly connected set, each step with the line that imports."""
    inside = set(members)
    start = members[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for line, target in graph[node]:
            step = f"{node}:{line} -> {target}"
            if target == start:
                return " | ".join(paths[node][1:] + [step]) if len(paths[node]) > 1 else step
            if target in inside and target not in paths:
                paths[target] = paths[node] + [step]
                queue.append(target)
    return " <-> ".join(members)


def test_no_import_cycle_even_inside_functions():
    _, graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(shortest_cycle(graph, c) for c in found)


def test_a_planted_upward_import_is_named(tmp_path):
    """The check itself: `from compress.stages import STAGES` inside compress/data is refused by name."""
    import shutil

    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / "compress" / "data" / "sources.py"
    planted.write_text(planted.read_text() + "\n\ndef planted():\n    from compress.stages import STAGES\n")
    known, graph = import_graph(tmp_path)
    problems = wrong_way(known, graph, tmp_path)
    found = cycles(graph)
    assert any("compress.data.sources imports compress.stages" in p and "libraries may not import stages" in p
               for p in problems), problems
    assert any("compress.data.sources" in c and "compress.stages" in c for c in found), found


def test_compress_has_no_loose_modules_beyond_its_entry_points():
    loose = sorted(p.stem for p in (ROOT / "compress").glob("*.py") if p.stem not in ENTRY_POINTS)
    assert not loose, f"loose modules at the top of compress/: {loose}"


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in project_modules().values()
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_no_two_modules_answer_to_the_same_name():
    """One module per meaning: a file name names one thing (package __init__ files aside)."""
    seen: dict[str, list[str]] = {}
    for module, path in project_modules().items():
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(module)
    # The pipeline's runner (compress/runner.py) and the device runner (deploy/runner/runner.py, the
    # file a release carries) are the one pair that share a word: each is named where it is run.
    allowed = {"runner"}
    twice = {name: mods for name, mods in seen.items() if len(mods) > 1 and name not in allowed}
    assert not twice, twice


@pytest.mark.parametrize("path", sorted((ROOT / "deploy" / "runner").glob("*.py")), ids=lambda p: p.name)
def test_device_runner_files_parse_as_python_3_8_and_import_no_torch(path):
    tree = ast.parse(path.read_text(), str(path), feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"torch", "torchvision", "compress", "deploy", "transformers", "timm"}, imported


def package_of(module: str) -> str:
    """compress.reporting.fmt -> compress.reporting; deploy.runner.harness -> deploy.runner; a module the layer
    table places on its own (compress.tasks.inputs, below the task packages) is a unit of its own."""
    for prefix, _ in LAYERS:
        if prefix.count(".") >= 2 and (module == prefix or module.startswith(prefix + ".")):
            return prefix
    return ".".join(module.split(".")[:2])


def test_no_two_packages_import_each_other():
    """Cycles between modules are refused above; between packages (reporting -> measuring -> reporting) too."""
    _, graph = import_graph()
    edges = {(package_of(m), package_of(t)) for m, targets in graph.items() for _, t in targets}
    both_ways = sorted(f"{a} <-> {b}" for a, b in edges if a < b and (b, a) in edges)
    assert not both_ways, both_ways
