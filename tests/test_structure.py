"""The architecture, checked: imports only point down, no cycles, small files and functions.

    models/     pure PyTorch                      layer 0: imports no project package, no Ray/Prefect/MLflow/DVC
    core/       the library                       layer 1: imports models/ only
    stages/     DVC entry points                  layer 2: imports core/ and models/
    pipelines/  CLI, flows, sweeps, registry      layer 3: imports core/ and models/; only the CLI runs stages

Every import in the source counts, including the ones inside functions (they run too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO

PACKAGES = {"models": 0, "core": 1, "stages": 2, "pipelines": 3}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
# orchestration and I/O libraries that models/ must never pull in
NOT_IN_MODELS = ("ray", "prefect", "mlflow", "dvc", "boto3", "pandas", "pyarrow")


def source_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = source_files()


def imported_names(path: Path) -> list[str]:
    """Absolute module names an imported file names (for `from a import b`: a.b when that is a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    return names


def project_module(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {project_module(name) for name in imported_names(path)}
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for vertex in graph:
        if vertex not in index:
            visit(vertex)
    return found


def layer(module: str) -> int:
    return PACKAGES[module.split(".")[0]]


def test_the_checker_sees_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("core.data.manifest") < layer("stages.ingest") < layer("pipelines.cli")
    assert "core.workspace" in import_graph()["stages.train"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_imports_only_point_down():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_only_the_cli_runs_stages_and_nothing_below_pipelines_imports_them():
    sideways = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                      if b.startswith("stages") and a != "pipelines.cli" and not a.startswith("stages"))
    assert sideways == []
    stage_to_stage = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                            if a.startswith("stages.") and b.startswith("stages."))
    assert stage_to_stage == []


def test_models_are_pure_pytorch():
    offending = sorted(f"{module}: {name}" for module, path in MODULES.items() if module.startswith("models")
                       for name in imported_names(path) if name.split(".")[0] in NOT_IN_MODELS)
    assert offending == []


def test_stages_are_thin_entry_points():
    for module, path in MODULES.items():
        if not module.startswith("stages.") or module == "stages":
            continue
        tree = ast.parse(path.read_text())
        functions = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        assert functions == ["main"] and classes == [], f"{path.name}: {functions} {classes}"
        assert f"python -m {module}" in (ast.get_docstring(tree) or ""), f"{path.name}: docstring names no command"


def test_every_dvc_stage_has_its_module_and_every_stage_module_a_dvc_stage():
    import yaml

    dvc_stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    modules = {m.split(".", 1)[1] for m in MODULES if m.startswith("stages.")}
    assert modules == dvc_stages


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_stay_small(module):
    path = MODULES[module]
    source = path.read_text()
    assert source.count("\n") <= MAX_FILE_LINES, f"{path.relative_to(REPO)} has {source.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{path.relative_to(REPO)}"
