"""The shape of the code: a CLI that starts without the service, no import cycles, and
modules small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "frostpoint"

# Modules over the limit today, each owned by a piece of work that splits it. The
# integrator removes a line when its module is split; the test fails for any other
# module over the limit, and for a listed one that has become small (so the list shrinks).
TOO_LONG_ALLOWED: set[str] = set()  # none left; keep it empty
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """frostpoint modules imported at module level (what runs on import), resolved to
    modules: `from a.b import c` is a.b.c if that is a module, else a.b. Imports inside
    functions and under `if TYPE_CHECKING:` do not run on import and are not edges."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.add(sub if sub in modules else base)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cli_starts_without_the_service() -> None:
    """Every CLI call imports frostpoint.cli.main; SQLAlchemy, Alembic, the service and
    the fabric cost about half a second and only `frostpoint server` needs them."""
    p = subprocess.run([sys.executable, "-c",
                        "import frostpoint.cli.main, sys; print('\\n'.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, check=True)
    loaded = p.stdout.split()
    assert "frostpoint.cli.main" in loaded
    heavy = [m for m in loaded if m.split(".")[0] in ("sqlalchemy", "alembic")
             or m.startswith(("frostpoint.service", "frostpoint.fabric"))]
    assert heavy == []


def test_server_command_still_imports_the_service() -> None:
    """The lazy import inside `server` works: a refused start (limits out of order)
    reaches the service's Timeouts and says so."""
    p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", "server",
                        "--data-dir", "/nonexistent-frostpoint-test"],
                       capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "FROSTPOINT_HOST_CALL_S": "99",
                            "FROSTPOINT_FREEZE_S": "5"})
    assert p.returncode == 2, p.stderr
    assert "InvalidInput" in p.stderr and "FROSTPOINT_HOST_CALL_S" in p.stderr


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _runtime_imports(path, name, modules) for name, path in modules.items()}
    # The walk sees module-level imports and not those inside functions (quickstart
    # imports cli.common's table inside run_quickstart), and the search finds cycles.
    assert "frostpoint.cli.admin" in graph["frostpoint.cli.main"]
    assert graph["frostpoint.cli.quickstart"] == {"frostpoint.cli.client"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles(graph) == []


def test_no_module_over_500_lines() -> None:
    lengths = {str(p.relative_to(SRC)): len(p.read_text().splitlines())
               for p in PACKAGE.rglob("*.py")}
    too_long = {p: n for p, n in lengths.items() if n > MAX_LINES}
    assert sorted(set(too_long) - TOO_LONG_ALLOWED) == [], too_long
    # A listed module that is small now comes off the list.
    assert sorted(TOO_LONG_ALLOWED - set(too_long)) == []
