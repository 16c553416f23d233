"""The management API's response bodies, as pydantic models: each route of
service/api.py declares one as its response_model (so OpenAPI shows the real shapes),
and the CLI parses what the server sends with the same models (`parse`).

Depends on pydantic and frostpoint.enums only, never on SQLAlchemy or a service module:
the CLI imports it and must start fast. Every model allows fields it does not name, so
a field added on the server is passed on rather than silently dropped, and an older
CLI still parses a newer server's answer; tests/test_api_models.py checks that the real
answers of a real server have no field the models do not name.
"""

from __future__ import annotations

from typing import Any

from frostpoint.api_model import ApiError as ApiError
from frostpoint.api_model import ApiModel as ApiModel
from frostpoint.api_model import parse as parse
from frostpoint.enums import (
    AgentStatus,
    Consistency,
    JobOperation,
    JobStatus,
    JobTrigger,
    PowerState,
    ProtectionState,
    ProvisioningState,
    RestorePointTier,
    SubTaskName,
    SubTaskStatus,
)
from frostpoint.schemas_ops import NotifyTarget as NotifyTarget
from frostpoint.schemas_ops import NotifyTested as NotifyTested
from frostpoint.schemas_ops import Status as Status


class ErrorBody(ApiModel):
    """What every failed request answers (service/api.py's exception handlers)."""
    error: ApiError


class Health(ApiModel):
    status: str
    version: str
    instance: str


# -- machines (service/machines.py Machines.describe) ------------------------------
class AgentInfo(ApiModel):
    installed: bool
    status: AgentStatus
    version: str | None
    last_heartbeat_age_s: float | None
    # What the last heartbeat said (fabric/endpoints.py Heartbeat); absent before one.
    os: str | None = None
    kernel: str | None = None
    python: str | None = None
    reboot_required: bool | None = None
    extensions_enabled: bool | None = None


class MachineDisk(ApiModel):
    name: str
    size_bytes: int
    filesystem: str
    mountpoint: str
    encrypted: bool
    encryption_key: str | None  # "KEYVAULT/KEY" of an encrypted disk


class MachineExtension(ApiModel):
    name: str
    version: str
    provisioning_state: ProvisioningState
    sequence: int
    status: dict[str, Any]  # the extension's last report, as the agent sent it


class Machine(ApiModel):
    name: str
    id: str
    region: str
    address: str
    kind: str  # sandbox or qemu
    memory_bytes: int  # a VM's (a sandbox has no limit of its own)
    cpus: int
    accel: str | None  # a VM's accelerator: kvm or tcg
    provisioning_state: ProvisioningState
    power_state: PowerState
    agent: AgentInfo
    disks: list[MachineDisk]
    resource_group: str | None
    extensions: list[MachineExtension]


class Console(ApiModel):
    """The end of a machine's console (a VM's serial log, a sandbox's init log)."""
    name: str
    console: str


class ExecResult(ApiModel):
    returncode: int
    stdout: str
    stderr: str


class Deleted(ApiModel):
    deleted: str


class Finding(ApiModel):
    """One doctor check (doctor/doctor.py Finding)."""
    check: str
    status: str  # pass | warn | fail
    message: str
    code: str | None
    fix: list[str]
    remedy: str | None
    risky: bool
    args: dict[str, Any]


class FixResult(ApiModel):
    result: str


# -- jobs (service/jobs.py describe_job) ---------------------------------------------
class SubTask(ApiModel):
    name: SubTaskName
    status: SubTaskStatus
    progress: dict[str, Any]
    started_at: str | None
    ended_at: str | None


class Job(ApiModel):
    id: str
    operation: JobOperation
    machine: str
    trigger: JobTrigger
    status: JobStatus
    started_at: str
    ended_at: str | None
    duration_s: float
    error: ApiError | None
    warnings: list[Any]  # catalog errors, mostly
    details: dict[str, Any]
    subtasks: list[SubTask]


# -- vaults, policies, protection (service/protection.py) -----------------------------
class Vault(ApiModel):
    name: str
    id: str
    backend: str  # local | azure
    location: str
    restore_points: int
    created_at: str
    block_size: int | None = None  # known once the vault was opened by this server
    soft_delete: str = "On"  # On | Off | AlwaysOn (cannot be turned off)
    soft_delete_days: int = 14  # 14-180
    immutability: str = "Disabled"  # Disabled | Enabled | Locked (cannot be undone)


class VaultDeleted(ApiModel):
    deleted: str
    restore_points_deleted: int
    objects_deleted: int


class VaultImported(Vault):
    restore_points_imported: int
    damaged_manifests: list[str]


class KeyFile(ApiModel):
    """A vault key sealed under a passphrase (vault/keyfile.py export_key)."""
    format: str
    version: int
    vault: str
    service_vault_id: str
    vault_id: str
    backend: str
    location: str
    kdf: dict[str, Any]
    nonce: str
    sealed_key: str


class VerifyReport(ApiModel):
    """details["report"] of a finished VaultVerify job (service/vault_checks.py)."""
    vault: str
    ok: bool
    sample_percent: float
    restore_points: int
    chunks_checked: int
    problems: list[dict[str, Any]]
    damaged_manifests: list[str]
    damaged_indexes: list[str]


class GcReport(ApiModel):
    """details["report"] of a finished VaultGc job (vault/reports.py GcReport)."""
    vault: str
    restore_points: int
    packs_total: int
    packs_pending: int
    packs_deleted: int
    bytes_deleted: int
    packs_partly_dead: int
    dead_bytes_kept: int
    duration_s: float
    kept_after_recheck: list[str]
    pending_discarded: bool


class Policy(ApiModel):
    """A policy's rules (service/gfs.py)."""
    name: str
    id: str
    schedule: str  # daily (standard) | hourly (enhanced)
    schedule_time: str  # HH:MM UTC: the daily time, or the hourly window's start
    every_hours: int  # 24 for daily
    window_hours: int
    instant_rp_days: int
    vault_retention_days: int  # the daily rule: each restore point kept N days
    weekly: int  # weeks the first restore point of weekly_on is kept (0: no rule)
    weekly_on: str
    monthly: int  # months the first restore point of monthly_on is kept
    monthly_on: str  # 1-28, last, first-WD, last-WD
    yearly: int  # years the monthly one of yearly_in is kept
    yearly_in: str
    rpo_hours: int | None = None  # no good restore point this long: rpo-missed
    instant_restore_points_peak: int  # at most this many instant ones (limit 18)
    used_by: list[str]  # machines protected with it


class PolicyUpdated(Policy):
    note: str  # how the change reaches existing restore points


class PreviewDay(ApiModel):
    date: str
    instant: int  # of them, how many still have their instant snapshot
    restore_points: list[str]  # the backup times (UTC) of those that exist at 24:00


class PolicyPreview(ApiModel):
    policy: str
    start: str
    days: list[PreviewDay]


class Protection(ApiModel):
    machine: str
    protection_state: ProtectionState
    # Absent when the machine is NotProtected.
    vault: str | None = None
    policy: str | None = None
    last_backup_at: str | None = None
    last_backup_status: JobStatus | None = None
    deleted_at: str | None = None  # SoftDeleted: since when
    purge_at: str | None = None  # SoftDeleted: when its data is purged
    excluded_disks: list[str] = []  # disks its backups leave out


# -- restore points (service/restore.py Restores.describe) ----------------------------
class RestorePointDisk(ApiModel):
    name: str
    size_bytes: int
    filesystem: str  # "unknown" for a pre-label backup found by `vault import`
    mountpoint: str
    # An encrypted disk's key vault key and its data key wrapped by it (hex).
    encryption_key: str | None = None
    wrapped_key: str | None = None


class RestorePoint(ApiModel):
    id: str
    machine: str
    job: str
    created_at: str
    consistency: Consistency
    tier: RestorePointTier
    freeze_ms: float | None
    disks: list[RestorePointDisk]
    instant_expires_at: str
    vault_expires_at: str | None
    excluded_disks: list[RestorePointDisk] = []  # the machine's disks it does not hold
    copies: list[str] = []  # vaults holding a copy (vault replicate)


class BrowseEntry(ApiModel):
    name: str  # bytes that are not UTF-8 shown as U+FFFD
    type: str  # file | dir | symlink | fifo | socket | char-device | block-device
    size: int
    mode: str  # octal permission bits
    mtime: str
    target: str | None = None  # a symlink's, never followed


class Listing(ApiModel):
    restore_point: str
    disk: str
    source: str  # instant | vault
    path: str
    entries: list[BrowseEntry]
    truncated: bool  # more than 10000 entries
    # From the vault: the disk's stored blocks, and how many of them the listing read.
    blocks_read: int | None = None
    blocks_total: int | None = None


class HostMount(ApiModel):
    path: str
    restore_point: str
    disk: str
    created_at: str


class HostUnmounted(HostMount):
    unmounted: bool


class Replication(ApiModel):
    id: str
    source: str
    target: str
    every_seconds: int | None
    last_job: str | None
    last_status: JobStatus | None
    last_run_at: str | None


class CollectionDeleted(ApiModel):
    machine: str
    deleted: int


# -- locks, resource groups, key vaults, tokens ------------------------------------
class Lock(ApiModel):
    name: str
    resource_group: str
    kind: str  # CanNotDelete | ReadOnly


class ResourceGroup(ApiModel):
    name: str
    region: str
    locks: list[str]
    machines: list[str]


class KeyVaultGrant(ApiModel):
    principal: str
    permissions: list[str]


class KeyVault(ApiModel):
    name: str
    keys: list[str]
    grants: list[KeyVaultGrant]


class Token(ApiModel):
    name: str
    role: str  # reader | operator | admin
    created_at: str
    file: bool  # the server's own admin token (DATA/api-token)


class NewToken(Token):
    token: str  # shown once


class TokenRevoked(ApiModel):
    revoked: str


# -- which model answers which route -------------------------------------------------
# service/api.py declares the same model as each route's response_model (a test checks
# that the two agree); the CLI looks an answer's model up here and parses it with it.
RESPONSES: dict[tuple[str, str], Any] = {
    ("GET", "/health"): Health,
    ("GET", "/errors"): list[ApiError],
    ("POST", "/machines"): Machine,
    ("POST", "/machines/import"): Machine,
    ("GET", "/machines"): list[Machine],
    ("GET", "/machines/{name}"): Machine,
    ("POST", "/machines/{name}/start"): Machine,
    ("POST", "/machines/{name}/stop"): Machine,
    ("POST", "/machines/{name}/deallocate"): Machine,
    ("DELETE", "/machines/{name}"): Deleted,
    ("POST", "/machines/{name}/exec"): ExecResult,
    ("GET", "/machines/{name}/console"): Console,
    ("DELETE", "/machines/{name}/disks/{disk}"): Machine,
    ("POST", "/machines/{name}/agent/restart"): Machine,
    ("POST", "/machines/{name}/agent/install"): Machine,
    ("GET", "/machines/{name}/doctor"): list[Finding],
    ("POST", "/machines/{name}/doctor/fix"): FixResult,
    ("PUT", "/machines/{name}/extensions/{ext}"): Machine,
    ("DELETE", "/machines/{name}/extensions/{ext}"): Machine,
    ("POST", "/vaults"): Vault,
    ("GET", "/vaults"): list[Vault],
    ("DELETE", "/vaults/{name}"): VaultDeleted,
    ("POST", "/vaults/{name}/key/export"): KeyFile,
    ("POST", "/vaults/import"): VaultImported,
    ("POST", "/vaults/{name}/verify"): Job,
    ("POST", "/vaults/{name}/gc"): Job,
    ("PATCH", "/vaults/{name}"): Vault,
    ("POST", "/vaults/{name}/immutability"): Vault,
    ("POST", "/policies"): Policy,
    ("GET", "/policies"): list[Policy],
    ("GET", "/policies/{name}"): Policy,
    ("PATCH", "/policies/{name}"): PolicyUpdated,
    ("DELETE", "/policies/{name}"): Deleted,
    ("GET", "/policies/{name}/preview"): PolicyPreview,
    ("POST", "/protection/{machine}/undelete"): Protection,
    ("DELETE", "/restore-points/{rp_id}"): Deleted,
    ("POST", "/protection/enable"): Protection,
    ("POST", "/protection/{machine}/stop"): Protection,
    ("POST", "/protection/{machine}/disable"): Protection,
    ("POST", "/protection/{machine}/resume"): Protection,
    ("GET", "/protection/{machine}"): Protection,
    ("POST", "/backups"): Job,
    ("GET", "/jobs"): list[Job],
    ("GET", "/jobs/{job_id}"): Job,
    ("POST", "/jobs/{job_id}/cancel"): Job,
    ("GET", "/restore-points"): list[RestorePoint],
    ("DELETE", "/machines/{name}/restore-point-collection"): CollectionDeleted,
    ("POST", "/restores/disks"): Job,
    ("POST", "/restores/vm"): Job,
    ("POST", "/restores/files"): Job,
    ("POST", "/restores/replace"): Job,
    ("GET", "/restore-points/{rp_id}/browse"): Listing,
    ("POST", "/restores/mount"): HostMount,
    ("POST", "/restores/unmount"): HostUnmounted,
    ("GET", "/restores/mounts"): list[HostMount],
    ("POST", "/vaults/{name}/replicate"): Job,
    ("GET", "/replications"): list[Replication],
    ("POST", "/protection/{machine}/update"): Protection,
    ("POST", "/locks"): Lock,
    ("GET", "/locks"): list[Lock],
    ("DELETE", "/locks/{name}"): Deleted,
    ("POST", "/keyvaults"): KeyVault,
    ("GET", "/keyvaults"): list[KeyVault],
    ("GET", "/keyvaults/{name}"): KeyVault,
    ("POST", "/keyvaults/{name}/keys"): KeyVault,
    ("POST", "/keyvaults/{name}/grants"): KeyVault,
    ("DELETE", "/keyvaults/{name}/grants/{principal}"): KeyVault,
    ("GET", "/resource-groups"): list[ResourceGroup],
    ("POST", "/tokens"): NewToken,
    ("GET", "/tokens"): list[Token],
    ("DELETE", "/tokens/{name}"): TokenRevoked,
    ("GET", "/status"): Status,
    ("POST", "/notify"): NotifyTarget,
    ("GET", "/notify"): list[NotifyTarget],
    ("DELETE", "/notify/{name}"): Deleted,
    ("POST", "/notify/{name}/test"): NotifyTested,
}


def _matches(template: str, path: str) -> bool:
    want, got = template.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(got) and all(
        w == g or (w.startswith("{") and w.endswith("}") and bool(g))
        for w, g in zip(want, got, strict=True))


def response_model(method: str, path: str) -> Any | None:
    """The model of the answer to `method path` (the path as sent, without a query); a
    route with a literal segment wins over one with a parameter there (/vaults/import
    over /vaults/{name})."""
    path = path.split("?", 1)[0]
    found = [t for (m, t) in RESPONSES if m == method and _matches(t, path)]
    if not found:
        return None
    return RESPONSES[(method, min(found, key=lambda t: t.count("{")))]
