"""Immutable vaults: no restore point leaves before its retention ends.

Enabled can be disabled again; Locked cannot be undone. Every path that deletes a
vault copy asks `refuse_early_delete` first (vault delete, the soft-delete purge,
`rp delete`), and a policy change asks `refuse_shortening` (service/policies.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.models import RestorePoint, Vault

DISABLED, ENABLED, LOCKED = "Disabled", "Enabled", "Locked"
ACTIONS = {"enable": ENABLED, "disable": DISABLED, "lock": LOCKED}


def immutable(v: Vault) -> bool:
    return v.immutability in (ENABLED, LOCKED)


def in_retention(rp: RestorePoint, now: datetime) -> bool:
    """Kept by its retention (a copy found by `vault import` is kept until deleted)."""
    return rp.vault_expires_at is None or rp.vault_expires_at >= now


def refuse_early_delete(v: Vault, rps: Iterable[RestorePoint], now: datetime,
                        what: str) -> None:
    """UserErrorImmutableVault if v is immutable and any of rps is still retained."""
    if not immutable(v):
        return
    kept = [rp for rp in rps if rp.vault_id == v.id and in_retention(rp, now)]
    if kept:
        until = max((rp.vault_expires_at for rp in kept if rp.vault_expires_at),
                    default=None)
        raise FrostpointError(
            "UserErrorImmutableVault",
            f"vault {v.name} is immutable ({v.immutability}): {what} would delete "
            f"{len(kept)} restore point(s) before their retention ends"
            + (f" (the last on {until.isoformat(timespec='minutes')}Z)" if until else
               " (kept until deleted by hand, which immutability refuses)"),
            {"vault": v.name, "immutability": v.immutability,
             "restore_points": [rp.id for rp in kept[:20]], "count": len(kept)})


def change(v: Vault, action: str) -> None:
    """Apply `vault immutability NAME enable|disable|lock` to v."""
    if action not in ACTIONS:
        raise FrostpointError("InvalidInput", "immutability is enable, disable or lock")
    if v.immutability == LOCKED and ACTIONS[action] != LOCKED:
        raise FrostpointError("UserErrorImmutableVault",
                              f"vault {v.name} is locked immutable: that cannot be undone",
                              {"vault": v.name, "immutability": LOCKED})
    v.immutability = ACTIONS[action]
