"""Vault: deduplicated, encrypted, crash-safe storage of VM disk images.

Layout and guarantees: docs/vault-format.md.
"""

from frostpoint.vault.backend import Backend, LocalBackend
from frostpoint.vault.crypto import VaultKeys
from frostpoint.vault.reports import BackupStats, ChunkProblem, ChunkRef, GcReport, VerifyReport
from frostpoint.vault.store import Vault

__all__ = [
    "Backend",
    "BackupStats",
    "ChunkProblem",
    "ChunkRef",
    "GcReport",
    "LocalBackend",
    "Vault",
    "VaultKeys",
    "VerifyReport",
]
