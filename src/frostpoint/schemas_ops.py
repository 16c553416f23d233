"""Response models of the operations routes: the overview (GET /status, service/
overview.py) and notification targets (service/notify.py). In schemas.RESPONSES with
the others; a module of its own to keep schemas.py readable."""

from __future__ import annotations

from frostpoint.api_model import ApiError, ApiModel
from frostpoint.enums import JobOperation, JobStatus, ProtectionState


class StatusMachine(ApiModel):
    name: str
    power_state: str
    agent_status: str
    heartbeat_age_s: float | None
    protection_state: ProtectionState
    vault: str | None
    policy: str | None
    last_backup_at: str | None
    last_backup_status: JobStatus | None
    last_backup_age_s: float | None
    consistency: str | None  # of its newest restore point
    last_restore_point_at: str | None
    rpo_hours: int | None  # the policy's RPO (None: it sets none)
    within_rpo: bool | None  # None: no RPO, or protection that expects no backups


class StatusJob(ApiModel):
    id: str
    operation: JobOperation
    machine: str  # the vault's name for vault jobs
    status: JobStatus
    started_at: str
    duration_s: float
    step: str | None  # the sub-task in progress
    percent: float | None


class StatusFailure(ApiModel):
    job: str
    operation: JobOperation
    machine: str
    ended_at: str | None
    error: ApiError  # its code, message, causes and fix commands (actions)


class StatusVault(ApiModel):
    name: str
    backend: str
    restore_points: int
    chunks: int | None  # None: the vault could not be opened
    bytes_stored: int | None


class Status(ApiModel):
    """The one-screen overview: `frostpoint status` and the web UI's overview."""
    time: str
    machines: list[StatusMachine]
    running: list[StatusJob]
    failures: list[StatusFailure]  # of the last 24 h, newest first
    vaults: list[StatusVault]


class NotifyTarget(ApiModel):
    name: str
    url: str
    events: list[str]  # failed | warning | rpo-missed | verify-damage
    signed: bool  # an HMAC-SHA256 signature header is sent
    created_at: str
    pending: int
    delivered: int
    failed: int  # given up on after every retry
    last_error: str | None


class NotifyTested(ApiModel):
    target: str
    delivered: bool
    duration_s: float
    error: ApiError | None
