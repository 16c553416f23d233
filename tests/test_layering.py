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


def test_both_platforms_have_every_method_of_the_seam(tmp_path: Path) -> None:
    from frostpoint.fabric.memory import MemoryPlatform
    from frostpoint.fabric.platform import MachinePlatform
    from frostpoint.service.runtime import host_platform
    assert isinstance(host_platform(tmp_path), MachinePlatform)
    assert isinstance(MemoryPlatform(tmp_path), MachinePlatform)
    assert not isinstance(object(), MachinePlatform)


def test_the_service_reaches_machines_only_through_the_seam() -> None:
    """No module of service/ or doctor/ names the sandbox, the pool, the network or
    guest folders: they use Runtime.platform (docs/machines.md "The seam")."""
    src = FABRIC.parent
    banned = ("frostpoint.fabric.sandbox", "frostpoint.fabric.pool", "frostpoint.fabric.guestfs",
              "frostpoint.fabric.hostthaw", "frostpoint.fabric.network", "frostpoint.fabric.system")
    bad = []
    for f in sorted([*(src / "service").glob("*.py"), *(src / "doctor").glob("*.py")]):
        if f.name == "runtime.py":
            continue  # where the platform is made (host_platform)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{f.name}:{node.lineno} {n}" for n in names if n in banned]
        text = f.read_text()
        bad += [f"{f.name}: {w}" for w in ("rt.sandbox", "rt.pool", "rt.network", "guest_dir",
                                           "mntns_file", '"sh", "-c"', "Path(rp.snapshot_dir)",
                                           "rmtree(rp.snapshot_dir") if w in text]
    assert not bad, bad
