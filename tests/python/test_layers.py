"""The package's imports flow one way (formats and core wrappers → stages/state → runtime → asgi/cli):
no import cycle among tokenlane's modules, and no stage or state backend imports the runtime or
the middleware."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import tokenlane

PACKAGE = Path(tokenlane.__file__).parent
TOP = ("tokenlane.runtime", "tokenlane.asgi", "tokenlane.cli", "tokenlane.__main__", "tokenlane")


def _module_name(path: Path) -> str:
    parts = ["tokenlane", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _imports() -> dict[str, set[str]]:
    """module -> the tokenlane modules it imports (also inside functions: a lazy import is a dependency)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("tokenlane"):
                    # `from . import x` imports the module x; `from .m import y` imports m.
                    found.update(f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target
                                 for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("tokenlane"))
        graph[name] = found
    return {m: {t for t in deps if t in graph and t != m} for m, deps in graph.items()}


def test_no_import_cycles():
    graph = {m: d for m, d in _imports().items() if m != "tokenlane"}  # the package re-exports everything
    graph = {m: {t for t in d if t != "tokenlane"} for m, d in graph.items()}
    # A package's __init__ re-exports its own submodules: that edge is not a cycle.
    graph = {m: {t for t in d if not t.startswith(m + ".")} for m, d in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_lower_layers_never_import_the_runtime_or_the_middleware():
    for module, deps in _imports().items():
        if module not in TOP:
            assert not deps & set(TOP), f"{module} imports {sorted(deps & set(TOP))}"
