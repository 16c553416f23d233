"""Vault: deduplicated, encrypted, crash-safe storage of VM disk images.

Layout and guarantees: docs/vault-format.md.
"""

from frostpoint.vault.backend import Backend, LocalBackend
from frostpoint.vault.crypto import VaultKeys
from frostpoint.vault.store import (
    BackupStats,
    ChunkProblem,
    ChunkRef,
    Vault,
    VerifyReport,
)

__all__ = [
    "Backend",
    "BackupStats",
    "ChunkProblem",
    "ChunkRef",
    "LocalBackend",
    "Vault",
    "VaultKeys",
    "VerifyReport",
]
