"""The service's named states, one spelling each (docs/api.md lists them).

Standard library only: the service, the doctor and the CLI import these, and the CLI
must start without SQLAlchemy or pydantic work it does not need. A StrEnum member is a
str, so it compares equal to the text stored in the database and serializes as that text.
States the guest also speaks (consistency) live in frostpoint.protocol, which the guest
packages carry, and are re-exported here.
"""

from __future__ import annotations

from enum import StrEnum

from frostpoint.protocol import Consistency

__all__ = ["AgentStatus", "Consistency", "JobOperation", "JobStatus", "JobTrigger",
           "PowerState", "ProtectionState", "ProvisioningState", "RestorePointTier",
           "SubTaskName", "SubTaskStatus"]


class JobStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    CANCELLING = "Cancelling"
    COMPLETED = "Completed"
    COMPLETED_WITH_WARNINGS = "CompletedWithWarnings"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class SubTaskStatus(StrEnum):
    NOT_STARTED = "NotStarted"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    SKIPPED = "Skipped"


class SubTaskName(StrEnum):
    TAKE_SNAPSHOT = "Take Snapshot"
    TRANSFER = "Transfer data to vault"
    RESTORE = "Restore"
    VERIFY = "Verify"
    COLLECT_GARBAGE = "CollectGarbage"
    REPLICATE = "Replicate"
    SAFETY_SNAPSHOT = "Take safety snapshot"
    REPLACE_DISKS = "Replace disks"


class JobOperation(StrEnum):
    BACKUP = "Backup"
    RESTORE_DISKS = "RestoreDisks"
    RESTORE_VM = "RestoreVm"
    RESTORE_FILES = "RestoreFiles"
    VAULT_VERIFY = "VaultVerify"
    VAULT_GC = "VaultGc"
    VAULT_REPLICATE = "VaultReplicate"
    RESTORE_REPLACE = "RestoreReplace"


class JobTrigger(StrEnum):
    ON_DEMAND = "OnDemand"
    SCHEDULED = "Scheduled"


class RestorePointTier(StrEnum):
    SNAPSHOT = "Snapshot"  # instant only
    SNAPSHOT_AND_VAULT = "Snapshot and Vault"
    VAULT = "Vault"  # the instant part has expired


class ProvisioningState(StrEnum):
    """A machine's or an extension's."""
    CREATING = "Creating"
    UPDATING = "Updating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DELETING = "Deleting"


class PowerState(StrEnum):
    RUNNING = "Running"
    STOPPED = "Stopped"
    DEALLOCATED = "Deallocated"


class AgentStatus(StrEnum):
    READY = "Ready"
    NOT_READY = "NotReady"
    UNKNOWN = "Unknown"


class ProtectionState(StrEnum):
    IR_PENDING = "IRPending"
    PROTECTED = "Protected"
    PROTECTION_ERROR = "ProtectionError"
    PROTECTION_STOPPED = "ProtectionStopped"
    PROTECTION_PAUSED = "ProtectionPaused"
    # Stopped with delete data: restorable until the vault's soft-delete period ends.
    SOFT_DELETED = "SoftDeleted"
    NOT_PROTECTED = "NotProtected"
