"""The backup service's state: the tables behind the REST API.

Schema changes go through Alembic (service/migrations); never create_all in production.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from frostpoint.enums import (
    AgentStatus,
    JobStatus,
    JobTrigger,
    PowerState,
    ProtectionState,
    ProvisioningState,
    RestorePointTier,
    SubTaskStatus,
)
from frostpoint.service import clock


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def utcnow() -> datetime:
    # The service's clock (service/clock.py): real time, unless a test moved it.
    return clock.utcnow()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON,
                           datetime: DateTime()}


class Vault(Base):
    __tablename__ = "vaults"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    backend: Mapped[str] = mapped_column(String(32), default="local")
    location: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Stop with delete data keeps an item's restore points this long (service/softdelete.py).
    soft_delete: Mapped[str] = mapped_column(String(16), default="On")  # On|Off|AlwaysOn
    soft_delete_days: Mapped[int] = mapped_column(Integer, default=14)
    # No restore point leaves before its retention ends (service/immutability.py).
    immutability: Mapped[str] = mapped_column(String(16), default="Disabled")


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # The schedule and retention rules are read by service/gfs.py (Schedule, Retention).
    schedule_kind: Mapped[str] = mapped_column(String(8), default="daily")  # daily|hourly
    schedule_time: Mapped[str] = mapped_column(String(5), default="22:00")  # HH:MM UTC
    every_hours: Mapped[int] = mapped_column(Integer, default=24)
    window_hours: Mapped[int] = mapped_column(Integer, default=24)
    instant_rp_days: Mapped[int] = mapped_column(Integer, default=2)
    vault_retention_days: Mapped[int] = mapped_column(Integer, default=30)  # the daily rule
    weekly_keep: Mapped[int] = mapped_column(Integer, default=0)
    weekly_on: Mapped[str] = mapped_column(String(3), default="sun")
    monthly_keep: Mapped[int] = mapped_column(Integer, default=0)
    monthly_on: Mapped[str] = mapped_column(String(12), default="1")
    yearly_keep: Mapped[int] = mapped_column(Integer, default=0)
    yearly_in: Mapped[str] = mapped_column(String(3), default="jan")
    # No good restore point within this many hours: an rpo-missed event (service/rpo.py).
    rpo_hours: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ResourceGroup(Base):
    __tablename__ = "resource_groups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    region: Mapped[str] = mapped_column(String(64))
    locks: Mapped[list[Lock]] = relationship(back_populates="resource_group")


class Lock(Base):
    __tablename__ = "locks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # CanNotDelete | ReadOnly
    resource_group_id: Mapped[str] = mapped_column(ForeignKey("resource_groups.id"))
    resource_group: Mapped[ResourceGroup] = relationship(back_populates="locks")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Machine(Base):
    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    region: Mapped[str] = mapped_column(String(64), default="local")
    slot: Mapped[int] = mapped_column(Integer, unique=True)  # address and link names
    address: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="sandbox")  # or "qemu"
    memory_bytes: Mapped[int] = mapped_column(Integer, default=1 << 30)  # a VM's
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    provisioning_state: Mapped[str] = mapped_column(String(16),
                                                    default=ProvisioningState.CREATING)
    power_state: Mapped[str] = mapped_column(String(16), default=PowerState.STOPPED)
    agent_token_hash: Mapped[str] = mapped_column(String(64))
    agent_installed: Mapped[bool] = mapped_column(default=True)
    agent_status: Mapped[str] = mapped_column(String(16), default=AgentStatus.UNKNOWN)
    agent_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    agent_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_heartbeat: Mapped[datetime | None] = mapped_column(nullable=True)
    goal_state_incarnation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disks: Mapped[list[Disk]] = relationship(back_populates="machine",
                                             order_by="Disk.lun", cascade="all, delete-orphan")
    extensions: Mapped[list[Extension]] = relationship(back_populates="machine",
                                                       cascade="all, delete-orphan")


class Disk(Base):
    __tablename__ = "disks"
    __table_args__ = (UniqueConstraint("machine_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    machine: Mapped[Machine] = relationship(back_populates="disks")
    name: Mapped[str] = mapped_column(String(64))
    lun: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filesystem: Mapped[str] = mapped_column(String(16), default="ext4")
    image_path: Mapped[str] = mapped_column(String(1024))
    mountpoint: Mapped[str] = mapped_column(String(256))
    encrypted: Mapped[bool] = mapped_column(default=False)
    # An encrypted disk's data key, wrapped by a key vault key ("KEYVAULT/KEY").
    key_ref: Mapped[str | None] = mapped_column(String(260), nullable=True)
    wrapped_key: Mapped[str | None] = mapped_column(String(256), nullable=True)  # hex


class KeyVault(Base):
    __tablename__ = "key_vaults"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    keys: Mapped[list[KeyVaultKey]] = relationship(cascade="all, delete-orphan")
    grants: Mapped[list[KeyVaultGrant]] = relationship(cascade="all, delete-orphan")


class KeyVaultKey(Base):
    """A key-encryption key; its material is a file in DATA/keys, never in the database."""
    __tablename__ = "key_vault_keys"
    __table_args__ = (UniqueConstraint("key_vault_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key_vault_id: Mapped[str] = mapped_column(ForeignKey("key_vaults.id"))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KeyVaultGrant(Base):
    """An access policy: what a principal may do with the vault's keys."""
    __tablename__ = "key_vault_grants"
    __table_args__ = (UniqueConstraint("key_vault_id", "principal"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key_vault_id: Mapped[str] = mapped_column(ForeignKey("key_vaults.id"))
    principal: Mapped[str] = mapped_column(String(128))
    permissions: Mapped[list[Any]] = mapped_column(default=list)  # e.g. ["get", "unwrapKey"]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Extension(Base):
    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("machine_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    machine: Mapped[Machine] = relationship(back_populates="extensions")
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    provisioning_state: Mapped[str] = mapped_column(String(16),
                                                    default=ProvisioningState.CREATING)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)  # last reported
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProtectedItem(Base):
    __tablename__ = "protected_items"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), unique=True)
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id"))
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id"))
    protection_state: Mapped[str] = mapped_column(String(24),
                                                  default=ProtectionState.IR_PENDING)
    # The schedule slot last started, "YYYY-MM-DDTHH:MM" (gfs.Schedule.due_slot).
    last_scheduled_slot: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # When stop with delete data made it SoftDeleted: purged a soft-delete period later.
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_backup_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_backup_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Disks left out of its backups (protect enable --exclude-disk), by name.
    excluded_disks: Mapped[list[Any]] = mapped_column(default=list)
    # When its rpo-missed event was raised; cleared once it is within its RPO again.
    rpo_missed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RestorePointCollection(Base):
    __tablename__ = "restore_point_collections"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    resource_group_id: Mapped[str] = mapped_column(ForeignKey("resource_groups.id"))


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    operation: Mapped[str] = mapped_column(String(32))  # Backup | Restore
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"), nullable=True)
    machine_name: Mapped[str] = mapped_column(String(64))
    # Set to the machine id while a backup runs; the unique constraint is what makes
    # "one backup of a machine at a time" hold across threads and service replicas.
    active_slot: Mapped[str | None] = mapped_column(String(40), nullable=True, unique=True)
    trigger: Mapped[str] = mapped_column(String(16), default=JobTrigger.ON_DEMAND)
    status: Mapped[str] = mapped_column(String(24), default=JobStatus.IN_PROGRESS)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    warnings: Mapped[list[Any]] = mapped_column(default=list)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    subtasks: Mapped[list[SubTask]] = relationship(back_populates="job", order_by="SubTask.seq",
                                                   cascade="all, delete-orphan")


class SubTask(Base):
    __tablename__ = "subtasks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    job: Mapped[Job] = relationship(back_populates="subtasks")
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24), default=SubTaskStatus.NOT_STARTED)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RestorePoint(Base):
    __tablename__ = "restore_points"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # Kept after the machine is deleted: a vault copy outlives its machine.
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"), nullable=True)
    machine_name: Mapped[str] = mapped_column(String(64))
    collection_id: Mapped[str | None] = mapped_column(
        ForeignKey("restore_point_collections.id"), nullable=True)
    job_id: Mapped[str] = mapped_column(String(32))
    vault_id: Mapped[str | None] = mapped_column(ForeignKey("vaults.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    consistency: Mapped[str] = mapped_column(String(32))
    tier: Mapped[str] = mapped_column(String(24), default=RestorePointTier.SNAPSHOT)
    snapshot_dir: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    instant_expires_at: Mapped[datetime] = mapped_column()
    vault_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    disks: Mapped[list[Any]] = mapped_column(default=list)  # [{name, size, fs, mountpoint}]
    freeze_ms: Mapped[float | None] = mapped_column(nullable=True)
    # The machine's disks this point does not hold: [{name, size_bytes, filesystem}].
    excluded_disks: Mapped[list[Any]] = mapped_column(default=list)


class ApiToken(Base):
    """A management API token: only its sha256 is kept, the token is shown once."""
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # reader | operator | admin
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Replication(Base):
    """A schedule that copies a vault's restore points into another vault."""
    __tablename__ = "replications"
    __table_args__ = (UniqueConstraint("source_vault_id", "target_vault_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source_vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id"))
    target_vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id"))
    every_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: by hand
    last_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RestorePointCopy(Base):
    """A restore point's copy in a vault other than its own (made by a replication)."""
    __tablename__ = "restore_point_copies"
    __table_args__ = (UniqueConstraint("restore_point_id", "vault_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    restore_point_id: Mapped[str] = mapped_column(ForeignKey("restore_points.id"))
    vault_id: Mapped[str] = mapped_column(ForeignKey("vaults.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HostMount(Base):
    """A restore point mounted on the host (restore mount); cleaned at service start."""
    __tablename__ = "host_mounts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    restore_point_id: Mapped[str] = mapped_column(String(32))
    disk: Mapped[str] = mapped_column(String(64))
    # Its working folder: the copy of the disk, or the lazy reader's mount.
    image: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotifyTarget(Base):
    """A webhook that is sent events (service/notify.py); its secret is in DATA/keys."""
    __tablename__ = "notify_targets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(default=list)  # e.g. ["failed", "rpo-missed"]
    signed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotifyDelivery(Base):
    """One event for one target, queued until delivered (or given up on)."""
    __tablename__ = "notify_deliveries"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target_id: Mapped[str] = mapped_column(ForeignKey("notify_targets.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="Pending")  # |Delivered|Failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
