"""Facts shared by the fabric and the guest: ports, addresses, guest paths.

These are the documented protocol (docs/protocol.md), not an implementation detail
of either side. Standard library only: this module runs on the guest's python3.
"""

from __future__ import annotations

from enum import StrEnum

FABRIC_SUBNET = "10.213.0"  # inside Frostpoint's own fabric namespace; never routed out
FABRIC_ADDRESS = f"{FABRIC_SUBNET}.1"
PREFIX_LEN = 24
WIRE_PORT = 80  # goal state, status, heartbeat
HOST_PORT = 32526  # extension packages, snapshot requests

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


def version_tuple(v: str | None) -> tuple[int, ...]:
    """'0.1.0' -> (0, 1, 0); anything unreadable sorts below every release."""
    try:
        return tuple(int(x) for x in (v or "0").split("."))
    except ValueError:
        return (0,)
