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


class ImportDiskIn(BaseModel):
    name: str
    path: str  # a raw or qcow2 image on the service's host


class ImportIn(BaseModel):
    name: str
    disks: list[ImportDiskIn]
    memory: str = "1G"
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


class PolicyUpdateIn(BaseModel):
    """The rules of a policy (service/gfs.py); None: the default, or unchanged."""
    schedule: str | None = None  # daily (standard) | hourly (enhanced)
    schedule_time: str | None = None  # HH:MM UTC: the time, or the window's start
    every_hours: int | None = None  # hourly: 4, 6, 8 or 12
    window_hours: int | None = None  # hourly: the window's length
    instant_rp_days: int | None = None
    vault_retention_days: int | None = None  # the daily rule: each kept N days
    weekly: int | None = None
    weekly_on: str | None = None
    monthly: int | None = None
    monthly_on: str | None = None  # 1-28, last, first-WD, last-WD
    yearly: int | None = None
    yearly_in: str | None = None
    rpo_hours: int | None = None  # an rpo-missed event past this; 0: none


class PolicyIn(PolicyUpdateIn):
    name: str


class VaultUpdateIn(BaseModel):
    soft_delete: str | None = None  # on | off | always-on
    soft_delete_days: int | None = None


class ImmutabilityIn(BaseModel):
    action: str  # enable | disable | lock


class ProtectIn(BaseModel):
    machine: str
    vault: str
    policy: str
    exclude_disks: list[str] | None = None  # None: keep what was set (all, at first)


class ProtectUpdateIn(BaseModel):
    exclude_disks: list[str] = Field(default_factory=list)  # []: back up every disk


class ReplicateIn(BaseModel):
    to: str
    every: str | None = None  # e.g. "24h"; None: this run only


class MountIn(BaseModel):
    restore_point: str
    to: str
    disk: str | None = None
    source: str = "auto"


class UnmountIn(BaseModel):
    path: str


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
    stop: bool = False  # restore replace: stop a running machine first
    missing_disks: str = "refuse"  # restore vm of a point without some disk: or "empty"
    kind: str | None = None  # restore vm: sandbox or qemu (default: the source machine's)


class NotifyIn(BaseModel):
    name: str
    url: str
    events: list[str]  # failed | warning | rpo-missed | verify-damage
    secret: str | None = None  # signs each event (HMAC-SHA256) when set
