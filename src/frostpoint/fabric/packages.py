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
from frostpoint.protocol import SNAPSHOT_EXTENSION


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


def build_snapshot_package(out_dir: Path) -> Package:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"name": SNAPSHOT_EXTENSION, "version": __version__,
                "install": "bin/frostpoint-snapshot install",
                "enable": "bin/frostpoint-snapshot enable",
                "uninstall": "bin/frostpoint-snapshot uninstall",
                "timeoutSeconds": 900}
    launcher = (f"#!{sys.executable}\n"
                "from frostpoint.extension.main import main\n"
                "main()\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "HandlerManifest.json", json.dumps(manifest, indent=2).encode(), 0o644)
        _add(tar, "bin/frostpoint-snapshot", launcher, 0o755)
    data = buf.getvalue()
    path = out_dir / f"{SNAPSHOT_EXTENSION}-{__version__}.tar.gz"
    path.write_bytes(data)
    return Package(SNAPSHOT_EXTENSION, __version__, path, hashlib.sha256(data).hexdigest())
