"""The package's shape: no import cycle between its modules (function-level imports included),
and a task or training method is one module in a registry."""

from __future__ import annotations

import ast
from pathlib import Path

import mlx_rsg
from mlx_rsg import tasks
from mlx_rsg.model import methods

PACKAGE = Path(mlx_rsg.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the mlx_rsg modules it imports anywhere in its body (a package's __init__ is
    the package's name; importing a submodule is an edge to it, not to its package)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found = subs & modules.keys()
                edges |= found
                if len(found) < len(subs) and node.module in modules:
                    edges.add(node.module)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    assert "mlx_rsg.train.loop" in graph and "mlx_rsg.tasks.rucos" in graph["mlx_rsg.tasks"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_task_and_method_module_is_registered():
    task_modules = {p.stem for p in (PACKAGE / "tasks").glob("*.py")} - {
        "__init__", "base", "fields", "units", "nli"
    }  # fmt: skip
    assert {t.name.lower() for t in tasks.REGISTRY.values()} == task_modules
    method_modules = {p.stem for p in (PACKAGE / "model" / "methods").glob("*.py")}
    assert {m.replace("-", "_") for m in methods.METHODS} == method_modules - {"__init__", "base"}
    for name in methods.METHODS:  # each module defines the method its line names
        assert methods.get(name).name == name


def test_help_and_the_config_modules_import_no_mlx():
    """`mlx-rsg --help` and every command's --help stay fast: the CLI, its config dataclasses
    and their options load without MLX, mlx-lm, transformers or torch (a fresh process)."""
    import subprocess
    import sys

    script = """
import sys
from click.testing import CliRunner
from mlx_rsg.cli import main
import mlx_rsg.train.config, mlx_rsg.model.config, mlx_rsg.bench.config, mlx_rsg.serve.config
runner = CliRunner()
for args in [["--help"], *([c, "--help"] for c in main.commands), ["data", "info", "--help"]]:
    result = runner.invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("mlx", "mlx.core", "mlx_lm", "transformers", "torch")
               if m in sys.modules)
print(",".join(heavy) or "none")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "none"


def long_functions(root: Path, limit: int) -> list[str]:
    """`module:function (lines)` for every function of `root` longer than `limit` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    module = ".".join(path.relative_to(root).with_suffix("").parts)
                    out.append(f"{module}:{node.name} ({lines})")
    return out


def test_no_function_is_longer_than_a_screen():
    """60 lines, decorators and docstring included (ruff holds complexity and statements)."""
    assert long_functions(PACKAGE, 60) == []


def test_the_length_check_finds_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * 61)
    assert long_functions(tmp_path, 60) == ["m:f (62)"]
