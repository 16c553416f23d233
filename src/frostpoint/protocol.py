"""Facts shared by the fabric and the guest: ports, addresses, guest paths.

These are the documented protocol (docs/protocol.md), not an implementation detail
of either side. Standard library only: this module runs on the guest's python3.
"""

# No `from __future__ import annotations`: TypedDict reads NotRequired from evaluated
# annotations only (on 3.11-3.13).
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

FABRIC_SUBNET = "10.213.0"  # inside Frostpoint's own fabric namespace; never routed out
FABRIC_ADDRESS = f"{FABRIC_SUBNET}.1"
PREFIX_LEN = 24
WIRE_PORT = 80  # goal state, status, heartbeat
HOST_PORT = 32526  # extension packages, snapshot requests
# The DHCP option that names the fabric address in a VM's lease (as option 245 names
# a cloud's wire server), and where the guest's dhclient keeps that lease.
FABRIC_OPTION = 245
GUEST_INTERFACE = "eth0"  # the fabric interface, in a sandbox machine and a VM alike
GUEST_LEASE_FILE = f"/var/lib/dhcp/dhclient.{GUEST_INTERFACE}.leases"
GUEST_NETWORK_CONFIG = "/etc/network/interfaces.d/frostpoint-fabric"  # a VM's

# Paths as the guest sees them (bind-mounted per machine in its mount namespace).
GUEST_ETC = "/etc/frostpoint"
GUEST_LIB = "/var/lib/frostpoint-agent"
GUEST_LOG = "/var/log/frostpoint"
AGENT_CONFIG = f"{GUEST_ETC}/agent.conf"
SCRIPT_CONFIG = f"{GUEST_ETC}/vmbackup.json"
DISK_ROOT = "/mnt"  # disk NAME is mounted at /mnt/NAME

SNAPSHOT_EXTENSION = "Frostpoint.Backup.Snapshot"
CUSTOM_SCRIPT_EXTENSION = "Frostpoint.CustomScript"  # runs settings.commandToExecute


class Consistency(StrEnum):
    """What a restore point's snapshot is consistent to (the extension reports it)."""
    CRASH = "CrashConsistent"
    FILE_SYSTEM = "FileSystemConsistent"
    APPLICATION = "ApplicationConsistent"
    UNKNOWN = "Unknown"  # a restore point `vault import` found without that label


MIN_AGENT_VERSION = "0.1.0"
# The agent package record: "frostpoint-agent VERSION", the release on the machine.
AGENT_INSTALLED = f"{GUEST_ETC}/agent.installed"


class ExtEnv(StrEnum):
    """The environment the agent gives an extension's commands (docs/extension.md):
    agent/extensions.py sets them, extension/*.py read them; this is the one list."""
    SEQUENCE = "FP_EXT_SEQUENCE"  # the settings' sequence number SEQ
    CONFIG_DIR = "FP_EXT_CONFIG_DIR"  # holds SEQ.settings
    STATUS_DIR = "FP_EXT_STATUS_DIR"  # the extension writes SEQ.status here
    LOG_DIR = "FP_EXT_LOG_DIR"  # created by the agent
    HOST_ENDPOINT = "FP_HOST_ENDPOINT"  # the host endpoint's URL
    AGENT_TOKEN_FILE = "FP_AGENT_TOKEN_FILE"  # the machine's credential
    LOG_VERBOSE = "FP_LOG_VERBOSE"  # "1" or "0"


# -- the bodies on the wire (docs/protocol.md). TypedDicts: the guest has no pydantic.
# The host validates the same bodies with the pydantic models of fabric/endpoints.py,
# which must name the same keys (tests/test_protocol_types.py checks it).

class GoalStateExtension(TypedDict):
    name: str
    version: str
    sequence: int
    settings: dict[str, Any]
    state: str  # "enabled", or "withdrawn": the task's job has ended, never run it
    package_path: str  # on the host endpoint
    sha256: str


class GoalState(TypedDict):
    """GET /machine/goalstate (ETag: the incarnation)."""
    incarnation: int
    machine: NotRequired[str]  # absent for a machine that is gone
    extensions: list[GoalStateExtension]


class SnapshotSettings(TypedDict):
    """The snapshot extension's settings in the goal state (service/backup.py)."""
    taskId: str  # the backup job's id
    disks: list[dict[str, Any]]
    freezeLimitSeconds: float
    hostCallTimeoutSeconds: float
    deadlineSeconds: float


class HeartbeatBody(TypedDict, total=False):
    """POST /machine/heartbeat, every few seconds (agent/main.py heartbeat_body)."""
    version: str
    status: str  # Ready | NotReady
    extensions_enabled: bool | None
    os: str
    kernel: str
    python: str
    reboot_required: bool


class ExtensionStatus(TypedDict):
    """One extension's report in POST /machine/status: the agent's fields
    (agent/extensions.py _status) with what the extension wrote to SEQ.status."""
    name: str
    version: str
    sequence: int
    status: str  # transitioning | success | error
    code: str | None  # a catalog code when status is error
    message: str | None
    warnings: NotRequired[list[Any]]
    elapsedMs: NotRequired[float]
    consistency: NotRequired[Consistency]  # the snapshot extension's success
    freezeMs: NotRequired[float | None]
    snapshot: NotRequired[dict[str, Any]]  # the host's answer to POST /snapshot
    details: NotRequired[dict[str, Any]]
    stdout: NotRequired[str]  # Frostpoint.CustomScript: the command's output's end
    # The agent's, when it ended the run itself (agent/extensions.py):
    errno: NotRequired[int]  # the kernel refused to execute `path`
    path: NotRequired[str]
    signal: NotRequired[int]  # the extension was killed by it
    last_status: NotRequired[dict[str, Any]]  # what it had reported before


class StatusBody(TypedDict):
    extensions: list[ExtensionStatus]


class SnapshotRequestBody(TypedDict):
    """POST /snapshot on the host endpoint."""
    taskId: str
    frozen: bool


def version_tuple(v: str | None) -> tuple[int, ...]:
    """'0.1.0' -> (0, 1, 0); anything unreadable sorts below every release."""
    try:
        return tuple(int(x) for x in (v or "0").split("."))
    except ValueError:
        return (0,)
