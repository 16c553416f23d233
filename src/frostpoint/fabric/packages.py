"""The guest's code, packaged from this repository: the agent's Debian package that goes
into the guest image, and the extension packages the host endpoint serves to agents.

Both carry their own copy of the guest code (frostpoint.agent, frostpoint.extension,
frostpoint.protocol) and of its pure-python dependencies (httpx and what it needs),
vendored from this interpreter's site-packages, and run on the guest's own python3:
nothing in them points at the host's interpreter or virtualenv.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import frostpoint
from frostpoint import __version__
from frostpoint.protocol import (
    CUSTOM_SCRIPT_EXTENSION,
    GUEST_ETC,
    GUEST_LIB,
    GUEST_LOG,
    SNAPSHOT_EXTENSION,
)

# The guest's python3 (Debian trixie, fabric/image.py): the vendored code runs on it.
GUEST_PYTHON = (3, 13)
VENDORED = ("httpx",)  # the guest code's imports outside the standard library
GUEST_MODULES = ("__init__.py", "protocol.py", "agent", "extension")
AGENT_PREFIX = "usr/lib/frostpoint-agent"  # in the guest image
GUEST_UNITS = Path(__file__).parent / "guest"  # a QEMU guest's units and boot script

Tree = dict[str, tuple[int, bytes]]  # relative path -> (mode, content)


@dataclass
class Package:
    name: str
    version: str
    path: Path
    sha256: str

    @property
    def url_path(self) -> str:
        return f"/extensions/{self.name}/{self.version}"


def _requirements(dist: metadata.Distribution) -> list[str]:
    """Names of dist's requirements that apply on the guest (no extras)."""
    from packaging.requirements import Requirement  # a dependency of pip and pytest

    major, minor = GUEST_PYTHON
    env = {"python_version": f"{major}.{minor}",
           "python_full_version": f"{major}.{minor}.0", "extra": ""}
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.append(req.name)
    return out


def vendored_tree() -> Tree:
    """httpx and its dependency closure, copied from site-packages (pure python only)."""
    seen: set[str] = set()
    todo = list(VENDORED)
    tree: Tree = {}
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        todo += _requirements(dist)
        for f in dist.files or []:
            parts = PurePosixPath(str(f)).parts
            if (parts[0].startswith("..") or parts[0].endswith((".dist-info", ".pth"))
                    or "__pycache__" in parts):
                continue
            if str(f).endswith((".so", ".pyd")):
                raise RuntimeError(f"{name} is not pure python ({f}): it cannot be vendored")
            tree[str(f)] = (0o644, Path(str(dist.locate_file(f))).read_bytes())
    return tree


def guest_code_tree() -> Tree:
    """The frostpoint modules the guest runs, as they are in this repository."""
    root = Path(frostpoint.__file__).parent
    tree: Tree = {}
    for entry in GUEST_MODULES:
        p = root / entry
        files = [p] if p.is_file() else sorted(p.rglob("*.py"))
        for f in files:
            tree[f"frostpoint/{f.relative_to(root)}"] = (0o644, f.read_bytes())
    return tree


def tree_digest(tree: Tree) -> str:
    h = hashlib.sha256()
    for path in sorted(tree):
        mode, data = tree[path]
        h.update(f"{path}\0{mode:o}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _launcher(module: str, pkg_relative: bool) -> bytes:
    """A script for the guest's python3. An extension package puts its own lib/ and
    vendor/ first on sys.path and PYTHONPATH (its child processes, such as the
    freezer, run the same code); the agent's finds them through a .pth file."""
    lines = ["#!/usr/bin/python3"]
    if pkg_relative:
        lines += ["import os, sys",
                  "_here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))",
                  "_paths = [os.path.join(_here, 'lib'), os.path.join(_here, 'vendor')]",
                  "sys.path[:0] = _paths",
                  "os.environ['PYTHONPATH'] = os.pathsep.join(_paths)"]
    lines += [f"from {module} import main", "main()", ""]
    return "\n".join(lines).encode()


def agent_deb_tree() -> Tree:
    """The files of the frostpoint-agent Debian package (paths from the guest's /)."""
    tree: Tree = {}
    for path, v in guest_code_tree().items():
        tree[f"{AGENT_PREFIX}/lib/{path}"] = v
    for path, v in vendored_tree().items():
        tree[f"{AGENT_PREFIX}/vendor/{path}"] = v
    tree["usr/lib/python3/dist-packages/frostpoint-agent.pth"] = (
        0o644, f"/{AGENT_PREFIX}/lib\n/{AGENT_PREFIX}/vendor\n".encode())
    tree["usr/bin/frostpoint-agent"] = (0o755, _launcher("frostpoint.agent.main", False))
    tree["usr/bin/frostpoint-channel"] = (0o755, _launcher("frostpoint.agent.channel", False))
    # A QEMU guest's systemd units and boot setup (fabric/guest/; the image's "vm"
    # flavour enables them; a sandbox has no systemd and ignores them).
    for f in sorted(GUEST_UNITS.iterdir()):
        if f.suffix == ".service":
            tree[f"lib/systemd/system/{f.name}"] = (0o644, f.read_bytes())
        else:
            tree[f"{AGENT_PREFIX}/{f.name}"] = (0o755, f.read_bytes())
    return tree


def agent_package_digest() -> str:
    return tree_digest(agent_deb_tree())


def build_agent_deb(out: Path) -> Path:
    """frostpoint-agent_VERSION_all.deb, built with dpkg-deb; also makes the empty
    folders the machine's own bind mounts go on."""
    tree = agent_deb_tree()
    with tempfile.TemporaryDirectory(prefix="fp-agent-deb-") as tmp:
        stage = Path(tmp) / "pkg"
        for path, (mode, data) in tree.items():
            p = stage / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(mode)
        for d in (GUEST_ETC, GUEST_LIB, GUEST_LOG):
            (stage / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (stage / GUEST_ETC.lstrip("/")).chmod(0o700)
        (stage / "DEBIAN").mkdir()
        (stage / "DEBIAN" / "control").write_text(
            "Package: frostpoint-agent\n"
            f"Version: {__version__}\n"
            "Architecture: all\n"
            "Maintainer: Frostpoint <frostpoint@localhost>\n"
            "Depends: python3 (>= 3.13), util-linux, procps\n"
            "Section: admin\nPriority: optional\n"
            "Description: Frostpoint guest agent and snapshot extension\n"
            " Vendors httpx and its pure-python dependencies.\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build",
                        str(stage), str(out)], check=True, capture_output=True)
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def build_package(out_dir: Path, name: str, program: str, module: str) -> Package:
    """An extension package: a manifest, a launcher, and the code it runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "version": __version__,
                "install": f"bin/{program} install",
                "enable": f"bin/{program} enable",
                "uninstall": f"bin/{program} uninstall",
                "timeoutSeconds": 900}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "HandlerManifest.json", json.dumps(manifest, indent=2).encode(), 0o644)
        _add(tar, f"bin/{program}", _launcher(module, True), 0o755)
        for sub, tree in (("lib", guest_code_tree()), ("vendor", vendored_tree())):
            for path in sorted(tree):
                mode, data = tree[path]
                _add(tar, f"{sub}/{path}", data, mode)
    data = buf.getvalue()
    out = out_dir / f"{name}-{__version__}.tar.gz"
    out.write_bytes(data)
    return Package(name, __version__, out, hashlib.sha256(data).hexdigest())


def build_packages(out_dir: Path) -> dict[str, Package]:
    """Every extension the host endpoint serves, by name."""
    return {p.name: p for p in (
        build_package(out_dir, SNAPSHOT_EXTENSION, "frostpoint-snapshot",
                      "frostpoint.extension.main"),
        build_package(out_dir, CUSTOM_SCRIPT_EXTENSION, "frostpoint-custom-script",
                      "frostpoint.extension.custom_script"))}
