"""The vault's own exceptions. The vault knows nothing of the service's error catalog:
the service maps these to catalog codes at its edge (service/vault_errors.py), and code
in the vault and the service steers by these types, never by comparing code strings."""

from __future__ import annotations

from typing import Any


class VaultError(Exception):
    """Base of every error the vault raises on purpose.

    detail: one line for a person; details: machine-readable context (chunk, pack,
    restore point, disk ...), passed on to the catalog error unchanged.
    """

    def __init__(self, detail: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.details: dict[str, Any] = dict(details or {})


class VaultCorrupt(VaultError):
    """Stored data failed its integrity check: an object does not authenticate, does
    not decode, or does not hash to its name."""


class ChunkMissing(VaultCorrupt):
    """A chunk a restore point needs is in no index, or its pack is gone."""


class Cancelled(VaultError):
    """should_cancel said so; nothing was committed (no restore point)."""


class NotInVault(VaultError):
    """The named thing is not there: no vault at the location, no such restore point,
    no such disk in it, or a disk image to back up does not exist."""


class AlreadyExists(VaultError):
    """A vault at the location, or a restore point with that id, exists already."""


class InvalidRequest(VaultError):
    """An argument is malformed or out of range (a restore point id, a block size,
    a disk name, a key of the wrong length, a vault format this code cannot read)."""


class WrongKey(InvalidRequest):
    """The master key does not open this vault's config."""


class KeyFileInvalid(VaultError):
    """A key export file does not open (wrong passphrase, changed) or holds no key."""


class DiskReadFailed(VaultError):
    """A disk image being backed up changed under the backup (shrank while read)."""
