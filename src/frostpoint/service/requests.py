"""The request bodies of the management API (service/api.py); the answers are the models
of frostpoint/schemas.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from frostpoint.service.keyvault import BACKUP_PRINCIPAL, NEEDED


class DiskIn(BaseModel):
    name: str = "data"
    size: str = "256M"
    filesystem: str = "ext4"
    encryption_key: str | None = None  # "KEYVAULT/KEY": an encrypted disk


class NameIn(BaseModel):
    name: str


class GrantIn(BaseModel):
    principal: str = BACKUP_PRINCIPAL
    permissions: list[str] = Field(default_factory=lambda: list(NEEDED))


class MachineIn(BaseModel):
    name: str
    disks: list[DiskIn] = Field(default_factory=lambda: [DiskIn()])
    region: str = "local"
    agent: bool = True
    agent_version: str | None = None  # the agent release in the machine's image
    kind: str = "sandbox"  # or "qemu": a QEMU guest (docs/machines.md)
    memory: str = "1G"  # a VM's
    cpus: int = 1


class FixIn(BaseModel):
    check: str


class ExecIn(BaseModel):
    argv: list[str]
    timeout: float = 300


class VaultIn(BaseModel):
    name: str
    location: str | None = None
    backend: str = "local"
    block_size: str | None = None  # e.g. "4M" (default) or "1M"


class KeyExportIn(BaseModel):
    passphrase: str


class VaultImportIn(BaseModel):
    name: str
    backend: str = "local"
    location: str
    key_file: dict[str, Any]  # the content of a `vault key export` file
    passphrase: str


class PolicyIn(BaseModel):
    name: str
    schedule_time: str = "22:00"
    instant_rp_days: int = 2
    vault_retention_days: int = 30


class ProtectIn(BaseModel):
    machine: str
    vault: str
    policy: str


class BackupIn(BaseModel):
    machine: str
    retain_days: int | None = None


class LockIn(BaseModel):
    name: str
    resource_group: str
    kind: str = "CanNotDelete"


class TokenIn(BaseModel):
    name: str
    role: str = "reader"  # reader | operator | admin


class RestoreIn(BaseModel):
    restore_point: str
    source: str = "auto"  # auto | instant | vault
    to: str | None = None
    name: str | None = None
    path: str | None = None
    disk: str | None = None
    overwrite: bool = False  # restore files: replace what is at the target
    kind: str | None = None  # restore vm: sandbox or qemu (default: the source machine's)
