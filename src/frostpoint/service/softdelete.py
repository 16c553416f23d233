"""Stop with delete data, soft delete and its purge, and the other ways restore points
are deleted on purpose (`rp delete`), with the vault settings that govern them.

A soft-deleted item keeps every restore point restorable, runs no backups and keeps
its retention still, until the vault's soft-delete period ends; then the cleanup
purges it. Every deletion asks service/immutability.py first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from frostpoint.enums import ProtectionState
from frostpoint.errors.catalog import FrostpointError
from frostpoint.service import immutability
from frostpoint.service.models import (
    Lock,
    Machine,
    ProtectedItem,
    RestorePoint,
    RestorePointCollection,
    Vault,
    utcnow,
)
from frostpoint.service.names import by_name
from frostpoint.service.protection import Protection, purge_at
from frostpoint.service.runtime import Runtime
from frostpoint.vault import format as fmt
from frostpoint.vault.errors import NotInVault

log = logging.getLogger("frostpoint.service")
ON, OFF, ALWAYS_ON = "On", "Off", "AlwaysOn"
SOFT_DELETE = {"on": ON, "off": OFF, "always-on": ALWAYS_ON}
MIN_DAYS, MAX_DAYS = 14, 180


class SoftDelete:
    def __init__(self, rt: Runtime, protection: Protection,
                 drop_copies: Callable[[str], None]) -> None:
        self.rt = rt
        self.protection = protection
        self.drop_copies = drop_copies  # a restore point's copies in other vaults

    # -- protection ------------------------------------------------------------------
    def stop(self, machine: str, delete_data: bool) -> dict[str, Any]:
        if not delete_data:
            return self.protection.set_state(machine, ProtectionState.PROTECTION_STOPPED)
        now = utcnow()
        with self.rt.sessions.begin() as s:
            item, v = self._item(s, machine)
            if item.protection_state == ProtectionState.SOFT_DELETED:
                return self.protection.describe_protection(machine)
            soft = v.soft_delete != OFF
            when = now + timedelta(days=v.soft_delete_days) if soft else now
            immutability.refuse_early_delete(
                v, self._rps(s, item), when, f"stop with delete data (purged {when:%Y-%m-%d})")
            if soft:
                item.protection_state, item.deleted_at = ProtectionState.SOFT_DELETED, now
            mid = item.machine_id
        if not soft:
            self._purge(mid)
        return self.protection.describe_protection(machine)

    def undelete(self, machine: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            item, _ = self._item(s, machine)
            if item.protection_state != ProtectionState.SOFT_DELETED:
                raise FrostpointError("Conflict", f"protection of {machine} is "
                                      f"{item.protection_state}, not SoftDeleted",
                                      {"protection_state": item.protection_state})
            item.protection_state, item.deleted_at = ProtectionState.PROTECTION_STOPPED, None
        return self.protection.describe_protection(machine)

    def purge_due(self) -> list[str]:
        """Purge the soft-deleted items whose period has ended; returns their machines."""
        now = utcnow()
        with self.rt.sessions() as s:
            due = [item.machine_id for item, v in s.execute(
                select(ProtectedItem, Vault).join(Vault, Vault.id == ProtectedItem.vault_id)
                .where(ProtectedItem.protection_state == ProtectionState.SOFT_DELETED))
                if (at := purge_at(item, v)) is not None and at <= now]
        done = []
        for mid in due:
            try:
                self._purge(mid)
                done.append(mid)
            except Exception:
                log.exception("purge of the soft-deleted item of machine %s", mid)
        return done

    def _purge(self, machine_id: str) -> None:
        """Delete an item's restore points (instant ones, and its vault's copies), then
        the item. An immutable vault keeps what is still retained, and the item with it."""
        with self.rt.sessions() as s:
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == machine_id))
            if item is None:
                return
            v = s.get(Vault, item.vault_id)
            assert v is not None
            rps = self._rps(s, item)
            now = utcnow()
            kept = {rp.id for rp in rps if immutability.immutable(v)
                    and rp.vault_id == v.id and immutability.in_retention(rp, now)}
            gone = [rp.id for rp in rps if rp.id not in kept]
        for rp_id in gone:
            self.delete_rp(rp_id)
        if kept:
            log.warning("vault %s is immutable: %d restore points of machine %s stay until "
                        "their retention ends (UserErrorImmutableVault)", v.name, len(kept),
                        machine_id)
            return
        with self.rt.sessions.begin() as s:
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == machine_id))
            if item is not None:
                s.delete(item)

    # -- restore points ------------------------------------------------------------
    def delete_restore_point(self, rp_id: str) -> dict[str, Any]:
        """`rp delete`: a restore point, its instant snapshot and its vault copy."""
        with self.rt.sessions() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is None:
                raise FrostpointError("NotFound", f"no restore point {rp_id}")
            v = s.get(Vault, rp.vault_id) if rp.vault_id else None
            if v is not None:
                immutability.refuse_early_delete(v, [rp], utcnow(), "rp delete")
            rpc = s.get(RestorePointCollection, rp.collection_id) if rp.collection_id else None
            locks = [lk.name for lk in s.scalars(select(Lock).where(
                Lock.resource_group_id == rpc.resource_group_id))] if rpc else []
            if locks:
                raise FrostpointError("BackUpOperationFailedV2",
                                      f"lock(s) {', '.join(locks)} on the resource group "
                                      "stop the deletion", {"locks": locks})
        self.delete_rp(rp_id)
        return {"deleted": rp_id}

    def delete_rp(self, rp_id: str) -> None:
        """Delete one restore point's copies, then its row (a crash between: run again)."""
        with self.rt.sessions() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is None:
                return
            snap, vault_id = rp.snapshot_dir, rp.vault_id
        if snap:
            self.rt.platform.delete_snapshot(snap)
        if vault_id:
            self.delete_vault_copy(vault_id, rp_id)
        self.drop_copies(rp_id)  # their rows refer to the restore point's
        with self.rt.sessions.begin() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is not None:
                s.delete(rp)

    def delete_vault_copy(self, vault_id: str, rp_id: str) -> None:
        store = self.protection.store(vault_id)
        try:
            store.delete_restore_point(rp_id)
        except NotInVault:
            # A manifest already gone (deleted by hand, or by a pass that crashed before
            # its commit) counts as deleted, but only in a vault that is there: a
            # missing vault config means the vault is unreachable, not the point gone.
            if not store.backend.exists(fmt.CONFIG):
                raise

    # -- vault settings --------------------------------------------------------------
    def update_vault(self, name: str, soft_delete: str | None,
                     soft_delete_days: int | None) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            v = self._vault(s, name)
            if soft_delete is not None:
                if soft_delete not in SOFT_DELETE:
                    raise FrostpointError("InvalidInput", "--soft-delete is on, off or always-on")
                if v.soft_delete == ALWAYS_ON and SOFT_DELETE[soft_delete] != ALWAYS_ON:
                    raise FrostpointError("Conflict", f"soft delete of vault {name} is "
                                          "always-on: it cannot be turned off",
                                          {"vault": name, "soft_delete": ALWAYS_ON})
                v.soft_delete = SOFT_DELETE[soft_delete]
            if soft_delete_days is not None:
                if not MIN_DAYS <= soft_delete_days <= MAX_DAYS:
                    raise FrostpointError("InvalidInput", f"--soft-delete-days must be "
                                          f"{MIN_DAYS}-{MAX_DAYS}")
                v.soft_delete_days = soft_delete_days
            vid = v.id
        return self.protection.describe_vault(vid)

    def set_immutability(self, name: str, action: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            v = self._vault(s, name)
            immutability.change(v, action)
            vid = v.id
        return self.protection.describe_vault(vid)

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _vault(s: Session, name: str) -> Vault:
        v: Vault = by_name(s, Vault, name, "vault")
        return v

    @staticmethod
    def _item(s: Session, machine: str) -> tuple[ProtectedItem, Vault]:
        m = by_name(s, Machine, machine, "machine")
        item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
        if item is None:
            raise FrostpointError("UserErrorBcmDatasourceNotPresent",
                                  f"machine {machine} is not protected", {"machine": machine})
        v = s.get(Vault, item.vault_id)
        assert v is not None
        return item, v

    @staticmethod
    def _rps(s: Session, item: ProtectedItem) -> list[RestorePoint]:
        """An item's data: its instant restore points and its vault's copies."""
        return [rp for rp in s.scalars(select(RestorePoint).where(
            RestorePoint.machine_id == item.machine_id))
            if rp.vault_id in (item.vault_id, None)]
