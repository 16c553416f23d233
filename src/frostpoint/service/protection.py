"""Vaults, policies, protection, resource groups and locks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.models import (
    Lock,
    Machine,
    Policy,
    ProtectedItem,
    ResourceGroup,
    RestorePoint,
    RestorePointCollection,
    Vault,
)
from frostpoint.service.runtime import Runtime
from frostpoint.vault.azure import AzureBlobBackend
from frostpoint.vault.backend import Backend, LocalBackend
from frostpoint.vault.format import BLOCK_SIZE
from frostpoint.vault.store import Vault as VaultStore

TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
LOCK_KINDS = ("CanNotDelete", "ReadOnly")


def _by_name(s: Session, model: Any, name: str, what: str) -> Any:
    obj = s.scalar(select(model).where(model.name == name))
    if obj is None:
        raise FrostpointError("NotFound", f"no {what} named {name!r}")
    return obj


class Protection:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._stores: dict[str, VaultStore] = {}

    # -- vaults --------------------------------------------------------------------
    @staticmethod
    def _backend(kind: str, location: str) -> Backend:
        if kind == "local":
            Path(location).mkdir(parents=True, exist_ok=True)
            return LocalBackend(Path(location))
        if kind == "azure":
            try:
                return AzureBlobBackend.from_url(location)
            except ValueError as e:
                raise FrostpointError("InvalidInput", str(e)) from None
        raise FrostpointError("InvalidInput", f"vault backend {kind!r} is local or azure")

    def create_vault(self, name: str, location: str | None = None,
                     backend: str = "local", block_size: int | None = None) -> dict[str, Any]:
        if backend == "azure" and not location:
            raise FrostpointError("InvalidInput", "an Azure vault needs --location "
                                  "azure://CONTAINER[/PREFIX][?connection_string_env=VAR]")
        location = location or str(self.rt.data_dir / "vaults" / name)
        store_backend = self._backend(backend, location)
        with self.rt.sessions.begin() as s:
            if s.scalar(select(Vault).where(Vault.name == name)):
                raise FrostpointError("Conflict", f"vault {name} already exists")
            v = Vault(name=name, backend=backend, location=location)
            s.add(v)
            s.flush()
            vid = v.id
        try:
            self._stores[vid] = VaultStore.create(store_backend, self.rt.vault_key(vid, True),
                                                  block_size=block_size or BLOCK_SIZE)
        except Exception:
            with self.rt.sessions.begin() as s:
                s.delete(s.get(Vault, vid))
            raise
        return self.describe_vault(vid)

    def delete_vault(self, name: str) -> dict[str, Any]:
        """Delete a vault, its objects and its key. Refused while a machine is protected
        into it; restore points that lived only there go, instant ones stay."""
        with self.rt.sessions.begin() as s:
            v = s.scalar(select(Vault).where(Vault.name == name))
            if v is None:
                raise FrostpointError("NotFound", f"no vault named {name!r}")
            users = [m for (m,) in s.execute(
                select(Machine.name).join(ProtectedItem, ProtectedItem.machine_id == Machine.id)
                .where(ProtectedItem.vault_id == v.id))]
            if users:
                raise FrostpointError("Conflict", f"vault {name} holds the protection of "
                                      f"{', '.join(users)}: delete those machines first",
                                      {"machines": users})
            vid, kind, location = v.id, v.backend, v.location
            gone = 0
            for rp in s.scalars(select(RestorePoint).where(RestorePoint.vault_id == vid)):
                if rp.tier == "Vault":
                    s.delete(rp)
                    gone += 1
                else:
                    rp.tier, rp.vault_id, rp.vault_expires_at = "Snapshot", None, None
            s.delete(v)
        self._stores.pop(vid, None)
        backend = self._backend(kind, location)
        objects = backend.list("")
        for obj in objects:
            backend.delete(obj)
        (self.rt.keys_dir / f"{vid}.key").unlink(missing_ok=True)
        return {"deleted": name, "restore_points_deleted": gone, "objects_deleted": len(objects)}

    def store(self, vault_id: str) -> VaultStore:
        if vault_id not in self._stores:
            with self.rt.sessions() as s:
                v = s.get(Vault, vault_id)
                assert v is not None
                kind, location = v.backend, v.location
            self._stores[vault_id] = VaultStore.open(self._backend(kind, location),
                                                     self.rt.vault_key(vault_id))
        return self._stores[vault_id]

    def describe_vault(self, vault_id: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            v = s.get(Vault, vault_id)
            assert v is not None
            count = s.scalar(select(func.count()).select_from(RestorePoint)
                             .where(RestorePoint.vault_id == v.id))
            vid = v.id
            out = {"name": v.name, "id": v.id, "backend": v.backend, "location": v.location,
                   "restore_points": count, "created_at": v.created_at.isoformat() + "Z"}
        store = self._stores.get(vid)  # opened vaults only: no storage call to list them
        return {**out, "block_size": store.config.block_size} if store else out

    def list_vaults(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            ids = list(s.scalars(select(Vault.id).order_by(Vault.name)))
        return [self.describe_vault(i) for i in ids]

    # -- policies ------------------------------------------------------------------
    def create_policy(self, name: str, schedule_time: str, instant_rp_days: int,
                      vault_retention_days: int) -> dict[str, Any]:
        if not TIME_RE.match(schedule_time):
            raise FrostpointError("InvalidInput", "schedule time must be HH:MM (UTC)")
        if not 1 <= instant_rp_days <= 5:
            raise FrostpointError("InvalidInput", "instant restore points are kept 1-5 days")
        if not 1 <= vault_retention_days <= 36500:
            raise FrostpointError("InvalidInput", "vault retention must be 1-36500 days")
        with self.rt.sessions.begin() as s:
            if s.scalar(select(Policy).where(Policy.name == name)):
                raise FrostpointError("Conflict", f"policy {name} already exists")
            p = Policy(name=name, schedule_time=schedule_time, instant_rp_days=instant_rp_days,
                       vault_retention_days=vault_retention_days)
            s.add(p)
        return self.describe_policy(p)

    @staticmethod
    def describe_policy(p: Policy) -> dict[str, Any]:
        return {"name": p.name, "id": p.id, "schedule_time": p.schedule_time,
                "instant_rp_days": p.instant_rp_days,
                "vault_retention_days": p.vault_retention_days}

    def list_policies(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            return [self.describe_policy(p) for p in s.scalars(select(Policy)
                                                               .order_by(Policy.name))]

    # -- protection ----------------------------------------------------------------
    def enable(self, machine: str, vault: str, policy: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            m = _by_name(s, Machine, machine, "machine")
            v = _by_name(s, Vault, vault, "vault")
            p = _by_name(s, Policy, policy, "policy")
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None:
                item = ProtectedItem(machine_id=m.id, vault_id=v.id, policy_id=p.id)
                s.add(item)
            else:
                item.vault_id, item.policy_id = v.id, p.id
                if item.protection_state in ("ProtectionStopped", "ProtectionPaused"):
                    item.protection_state = "IRPending"
            self.collection_for(s, m)
        return self.describe_protection(machine)

    def set_state(self, machine: str, state: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            m = _by_name(s, Machine, machine, "machine")
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None:
                raise FrostpointError("UserErrorBcmDatasourceNotPresent",
                                      f"machine {machine} is not protected")
            if state == "resume":
                has_rp = s.scalar(select(func.count()).select_from(RestorePoint)
                                  .where(RestorePoint.machine_id == m.id))
                item.protection_state = "Protected" if has_rp else "IRPending"
            else:
                item.protection_state = state
        return self.describe_protection(machine)

    def describe_protection(self, machine: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            m = _by_name(s, Machine, machine, "machine")
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None:
                return {"machine": machine, "protection_state": "NotProtected"}
            v, p = s.get(Vault, item.vault_id), s.get(Policy, item.policy_id)
            assert v is not None and p is not None
            return {"machine": machine, "protection_state": item.protection_state,
                    "vault": v.name, "policy": p.name,
                    "last_backup_at": item.last_backup_at.isoformat() + "Z"
                    if item.last_backup_at else None,
                    "last_backup_status": item.last_backup_status}

    # -- resource groups and locks -----------------------------------------------
    @staticmethod
    def collection_for(s: Session, m: Machine) -> RestorePointCollection:
        rpc = s.scalar(select(RestorePointCollection)
                       .where(RestorePointCollection.machine_id == m.id))
        if rpc:
            return rpc
        rg_name = f"FrostpointRG_{m.region}_1"
        rg = s.scalar(select(ResourceGroup).where(ResourceGroup.name == rg_name))
        if rg is None:
            rg = ResourceGroup(name=rg_name, region=m.region)
            s.add(rg)
            s.flush()
        rpc = RestorePointCollection(name=f"FrostpointRPC_{m.name}_{m.id[:6]}",
                                     machine_id=m.id, resource_group_id=rg.id)
        s.add(rpc)
        s.flush()
        return rpc

    def create_lock(self, name: str, resource_group: str, kind: str) -> dict[str, Any]:
        if kind not in LOCK_KINDS:
            raise FrostpointError("InvalidInput", f"lock kind must be one of {LOCK_KINDS}")
        with self.rt.sessions.begin() as s:
            rg = _by_name(s, ResourceGroup, resource_group, "resource group")
            if s.scalar(select(Lock).where(Lock.name == name)):
                raise FrostpointError("Conflict", f"lock {name} already exists")
            s.add(Lock(name=name, kind=kind, resource_group_id=rg.id))
        return {"name": name, "resource_group": resource_group, "kind": kind}

    def list_locks(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            return [{"name": lk.name, "kind": lk.kind,
                     "resource_group": lk.resource_group.name}
                    for lk in s.scalars(select(Lock).order_by(Lock.name))]

    def delete_lock(self, name: str) -> None:
        with self.rt.sessions.begin() as s:
            s.delete(_by_name(s, Lock, name, "lock"))

    def list_resource_groups(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            machines: dict[str, list[str]] = {}
            for rg_id, machine in s.execute(
                    select(RestorePointCollection.resource_group_id, Machine.name)
                    .join(Machine, Machine.id == RestorePointCollection.machine_id)):
                machines.setdefault(rg_id, []).append(machine)
            return [{"name": rg.name, "region": rg.region,
                     "locks": [lk.name for lk in rg.locks],
                     "machines": sorted(machines.get(rg.id, []))}
                    for rg in s.scalars(select(ResourceGroup))]
