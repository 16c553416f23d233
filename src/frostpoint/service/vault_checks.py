"""Vault verify and GC as the service offers them: damaged chunks are named with the
restore points, disks and files they affect."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.models import RestorePoint, Vault
from frostpoint.service.protection import Protection
from frostpoint.service.runtime import Runtime

E2FS_TOOL_S = 30  # the image is a guest's filesystem: a crafted one may never finish


def _e2fs(argv: list[str]) -> str:
    """Output of an e2fsprogs tool on a guest's image; empty if it ran too long."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=E2FS_TOOL_S).stdout
    except subprocess.TimeoutExpired:
        return ""


def ext4_files_at(image: Path, offset: int, length: int) -> list[str]:
    """Paths of the files that own bytes [offset, offset+length) of an ext4 image."""
    head = _e2fs(["dumpe2fs", "-h", str(image)])
    m = re.search(r"^Block size:\s+(\d+)", head, re.M)
    if not m:
        return []
    bs = int(m.group(1))
    blocks = " ".join(str(b) for b in range(offset // bs, (offset + length) // bs))
    out = _e2fs(["debugfs", "-R", f"icheck {blocks}", str(image)])
    inodes = sorted({int(parts[1]) for line in out.splitlines()[1:]
                     if len(parts := line.split()) == 2 and parts[1].isdigit()})
    if not inodes:
        return []
    out = _e2fs(["debugfs", "-R", "ncheck " + " ".join(map(str, inodes)), str(image)])
    paths = {"/" + line.split(None, 1)[1].lstrip("/") for line in out.splitlines()[1:]
             if len(line.split(None, 1)) == 2}
    return sorted(paths) or [f"(filesystem metadata, inodes {inodes[:5]})"]


class VaultChecks:
    def __init__(self, rt: Runtime, protection: Protection) -> None:
        self.rt = rt
        self.protection = protection

    def _vault_id(self, name: str) -> str:
        with self.rt.sessions() as s:
            v = s.scalar(select(Vault).where(Vault.name == name))
            if v is None:
                raise FrostpointError("NotFound", f"no vault named {name!r}")
            return v.id

    def verify(self, name: str, sample: float = 100.0) -> dict[str, Any]:
        if not 0 < sample <= 100:
            raise FrostpointError("InvalidInput", "--sample is a percentage in (0, 100]")
        store = self.protection.store(self._vault_id(name))
        report = store.verify(sample=sample)
        # A chunk is one block: the vault's block size, not the default 4 MiB.
        block = store.config.block_size
        problems = []
        for kind, items in (("damaged", report.damaged), ("missing", report.missing)):
            for p in items:
                problems.append({"kind": kind, "chunk": p.chunk_id, "pack": p.pack,
                                 "reason": p.reason,
                                 "affects": [self._affected(r.restore_point, r.disk, r.offset,
                                                            block) for r in p.refs]})
        return {"vault": name, "ok": report.ok, "sample_percent": sample,
                "restore_points": report.restore_points,
                "chunks_checked": report.chunks_checked, "problems": problems,
                "damaged_manifests": report.damaged_manifests,
                "damaged_indexes": report.damaged_indexes}

    def _affected(self, rp_id: str, disk: str, offset: int,
                  block: int) -> dict[str, Any]:
        out: dict[str, Any] = {"restore_point": rp_id, "disk": disk, "offset": offset,
                               "length": block}
        with self.rt.sessions() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is None:
                return out
            out["machine"] = rp.machine_name
            fs = next((d["filesystem"] for d in rp.disks if d["name"] == disk), None)
            image = (self.rt.platform.snapshot_image(rp.snapshot_dir, disk)
                     if rp.snapshot_dir else None)
        if image is None or not image.exists():
            out["files"] = "unknown: the instant snapshot has expired"
        elif fs == "ext4":
            out["files"] = ext4_files_at(image, offset, block)
        else:
            out["files"] = f"unknown: file mapping on {fs} is not built yet"
        return out

    def gc(self, name: str, grace_hours: float = 24.0) -> dict[str, Any]:
        if grace_hours < 0:
            raise FrostpointError("InvalidInput", "--grace-hours must be >= 0")
        report = self.protection.store(self._vault_id(name)).gc(grace_hours * 3600)
        return {"vault": name, **dataclasses.asdict(report)}
