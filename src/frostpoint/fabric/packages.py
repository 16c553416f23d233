"""Builds the snapshot extension's package that the host endpoint serves to agents."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from frostpoint import __version__
from frostpoint.protocol import CUSTOM_SCRIPT_EXTENSION, SNAPSHOT_EXTENSION


@dataclass
class Package:
    name: str
    version: str
    path: Path
    sha256: str

    @property
    def url_path(self) -> str:
        return f"/extensions/{self.name}/{self.version}"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def build_package(out_dir: Path, name: str, program: str, module: str) -> Package:
    """An extension package: a manifest and a launcher for one of our modules."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "version": __version__,
                "install": f"bin/{program} install",
                "enable": f"bin/{program} enable",
                "uninstall": f"bin/{program} uninstall",
                "timeoutSeconds": 900}
    launcher = (f"#!{sys.executable}\n"
                f"from {module} import main\n"
                "main()\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "HandlerManifest.json", json.dumps(manifest, indent=2).encode(), 0o644)
        _add(tar, f"bin/{program}", launcher, 0o755)
    data = buf.getvalue()
    path = out_dir / f"{name}-{__version__}.tar.gz"
    path.write_bytes(data)
    return Package(name, __version__, path, hashlib.sha256(data).hexdigest())


def build_packages(out_dir: Path) -> dict[str, Package]:
    """Every extension the host endpoint serves, by name."""
    return {p.name: p for p in (
        build_package(out_dir, SNAPSHOT_EXTENSION, "frostpoint-snapshot",
                      "frostpoint.extension.main"),
        build_package(out_dir, CUSTOM_SCRIPT_EXTENSION, "frostpoint-custom-script",
                      "frostpoint.extension.custom_script"))}
