"""Who may import whom (docs/architecture.md), read from the source itself.

Every import statement counts, those inside functions and under
``TYPE_CHECKING`` too: a cycle hidden from the interpreter is still a
cycle for whoever reads or changes the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "app")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from server.protocol import transport` imports a module too.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found.update(name for name in names if name in known)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or ``None``."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            child = pending.pop()
            if child in on_path:
                return [*path[path.index(child) :], child]
            if child not in done:
                stack.append((child, sorted(graph[child])))
                path.append(child)
                on_path.add(child)
    return None


def _reachable(graph: dict[str, set[str]], roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = _graph()
    assert "server.protocol" in graph and "app.network" in graph  # the graph was read
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_client_imports_nothing_of_the_server_but_the_protocol() -> None:
    graph = _graph()
    apps = {name for name in graph if name.split(".")[0] == "app"}
    of_server = {name for name in _reachable(graph, apps) if name.split(".")[0] == "server"}
    assert "server.protocol" in of_server
    allowed = {"server"} | {n for n in graph if n.startswith("server.protocol")}
    assert of_server <= allowed, f"the client reaches {sorted(of_server - allowed)}"


def test_the_protocol_imports_nothing_else_of_the_project() -> None:
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith("server.protocol"):
            outside = {n for n in imported if not n.startswith("server.protocol")}
            assert not outside, f"{name} imports {sorted(outside)}"


def _stdlib_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_protocol_is_pure_but_for_its_transport() -> None:
    # Framing, messages and rules never touch a socket, a thread or Tk; the
    # transport is the one place both sides read and write sockets.
    impure = {"socket", "ssl", "selectors", "threading", "tkinter", "ttkbootstrap"}
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("server.protocol") and name != "server.protocol.transport":
            assert not _stdlib_imports(path) & impure, f"{name} imports I/O"
    assert "socket" in _stdlib_imports(modules["server.protocol.transport"])


def test_the_architecture_document_names_every_module() -> None:
    document = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(ROOT))
        for name, path in _modules().items()
        if path.name != "__init__.py"
        and path.name not in document
        and str(path.relative_to(ROOT)) not in document
    ]
    assert not missing, f"docs/architecture.md does not mention {missing}"
