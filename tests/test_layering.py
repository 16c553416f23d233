"""The seam between service and machines holds: the fabric never imports the service
(docs/machines.md). Read from the source (ast), so a lazy import inside a function
counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

FABRIC = Path(__file__).resolve().parents[1] / "src" / "frostpoint" / "fabric"


def service_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        found += [f"{path.name}:{node.lineno} {n}" for n in names
                  if n == "frostpoint.service" or n.startswith("frostpoint.service.")]
    return found


def test_the_fabric_never_imports_the_service() -> None:
    files = sorted(FABRIC.glob("*.py"))
    assert len(files) > 5  # the walk found the fabric
    bad = [hit for f in files for hit in service_imports(f)]
    assert not bad, f"fabric modules import the service: {bad}"


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from frostpoint.service.runtime import instance_id\n"
                 "import frostpoint.service\n")
    assert len(service_imports(f)) == 2
