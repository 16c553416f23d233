"""Vaults, policies, protection, resource groups and locks."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from frostpoint.enums import Consistency, ProtectionState, RestorePointTier
from frostpoint.errors.catalog import FrostpointError
from frostpoint.service import immutability
from frostpoint.service.copies import forget_vault
from frostpoint.service.models import (
    Lock,
    Machine,
    Policy,
    ProtectedItem,
    ResourceGroup,
    RestorePoint,
    RestorePointCollection,
    Vault,
    utcnow,
)
from frostpoint.service.names import NAME_RE, by_name
from frostpoint.service.policies import refuse_shortening, retention_of
from frostpoint.service.runtime import Runtime
from frostpoint.service.selective import set_excluded
from frostpoint.vault import format as fmt
from frostpoint.vault import keyfile
from frostpoint.vault.azure import AzureBlobBackend
from frostpoint.vault.backend import Backend, LocalBackend
from frostpoint.vault.errors import VaultCorrupt, VaultError
from frostpoint.vault.format import BLOCK_SIZE
from frostpoint.vault.store import Vault as VaultStore
from frostpoint.vault.store import destroy

LOCK_KINDS = ("CanNotDelete", "ReadOnly")


def _azure_place(location: str) -> tuple[str, str]:
    """(container, prefix) of an azure:// location."""
    parts = urlsplit(location)
    return parts.netloc, parts.path.strip("/")


def _overlap(kind: str, a: str, b: str) -> bool:
    """Whether two vault locations of one backend kind could hold each other's objects."""
    if kind == "local":
        pa, pb = Path(a).resolve(), Path(b).resolve()
        return pa == pb or pa in pb.parents or pb in pa.parents
    (ca, xa), (cb, xb) = _azure_place(a), _azure_place(b)
    # Any account: a location names no account, only an environment variable.
    return ca == cb and (not xa or not xb or xa == xb or xa.startswith(xb + "/")
                         or xb.startswith(xa + "/"))


def _refuse_taken(s: Session, name: str, backend: str, location: str) -> None:
    """A new or imported vault needs a free name and a location no other vault's
    overlaps (a delete of one would take the other's objects)."""
    if s.scalar(select(Vault).where(Vault.name == name)):
        raise FrostpointError("Conflict", f"vault {name} already exists")
    for other in s.scalars(select(Vault).where(Vault.backend == backend)):
        if _overlap(backend, location, other.location):
            raise FrostpointError(
                "Conflict", f"vault location {location} overlaps vault "
                f"{other.name} at {other.location}", {"vault": other.name})


def imported_restore_point(vault_id: str, rp_id: str, doc: dict[str, Any]) -> RestorePoint:
    """The restore_points row of a manifest read by `vault import`. Its machine may
    not exist here; its instant snapshot is gone with the old host."""
    labels = doc.get("labels") or {}
    try:
        created = datetime.fromisoformat(str(doc["created"]).replace("Z", "+00:00"))
        created = created.astimezone(UTC).replace(tzinfo=None)
    except (KeyError, ValueError):
        created = utcnow()
    try:
        disks = json.loads(labels["disks"])
        if not isinstance(disks, list) or {d["name"] for d in disks} != set(doc["disks"]):
            raise ValueError("disks do not match the manifest")
    except (KeyError, ValueError, TypeError):
        # A backup from before the labels: sizes are known, the filesystem is not.
        disks = [{"name": n, "size_bytes": int(d["size"]), "filesystem": "unknown",
                  "mountpoint": ""} for n, d in doc["disks"].items()]
    return RestorePoint(
        id=rp_id, machine_id=None, machine_name=str(labels.get("machine", "unknown"))[:64],
        collection_id=None, job_id=str(labels.get("job", "imported"))[:32],
        vault_id=vault_id, created_at=created,
        consistency=str(labels.get("consistency", Consistency.UNKNOWN))[:32],
        tier=RestorePointTier.VAULT,
        snapshot_dir=None, instant_expires_at=created,
        # Kept until deleted by hand: an old retention would hand them straight to the
        # cleanup loop, and after a disaster they may be the only copies.
        vault_expires_at=None, disks=disks, freeze_ms=None)


def purge_at(item: ProtectedItem, v: Vault) -> datetime | None:
    """When a soft-deleted item's data is purged: the vault's period after its deletion."""
    if item.deleted_at is None:
        return None
    return item.deleted_at + timedelta(days=v.soft_delete_days)


_by_name = by_name


class Protection:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._stores: dict[str, VaultStore] = {}
        # API threads, jobs and the GC loop ask for stores at once: one object per vault
        # (one index in memory). Held while a vault opens; other vaults wait that long.
        self._stores_lock = threading.Lock()

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
        # The machine names' rule: the name is a path component of the default location.
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput",
                                  "vault names are 1-20 of a-z, 0-9, '-', starting a-z")
        with self.rt.sessions() as s:  # checked again below, in the transaction
            if s.scalar(select(Vault).where(Vault.name == name)):
                raise FrostpointError("Conflict", f"vault {name} already exists")
        if backend == "local":
            location = str(Path(location or self.rt.data_dir / "vaults" / name).resolve())
            # Refused before anything is made there: delete removes what a vault holds.
            if os.path.lexists(location) and not os.path.isdir(location):
                raise FrostpointError("Conflict", f"vault location {location} is a file",
                                      {"location": location})
            if os.path.isdir(location) and any(os.scandir(location)):
                raise FrostpointError("Conflict", f"vault location {location} is not empty: "
                                      "a vault needs a new or empty folder",
                                      {"location": location})
        assert location is not None
        store_backend = self._backend(backend, location)
        if backend == "azure" and store_backend.list(""):
            raise FrostpointError("Conflict", f"vault location {location} already holds "
                                  "blobs: a vault needs a prefix of its own",
                                  {"location": location})
        with self.rt.sessions.begin() as s:
            _refuse_taken(s, name, backend, location)
            v = Vault(name=name, backend=backend, location=location)
            s.add(v)
            s.flush()
            vid = v.id
        try:
            created = VaultStore.create(store_backend, self.rt.vault_key(vid, True),
                                        block_size=block_size or BLOCK_SIZE)
            with self._stores_lock:
                self._stores[vid] = created
        except Exception:
            with self.rt.sessions.begin() as s:
                s.delete(s.get(Vault, vid))
            (self.rt.keys_dir / f"{vid}.key").unlink(missing_ok=True)
            raise
        return self.describe_vault(vid)

    def delete_vault(self, name: str) -> dict[str, Any]:
        """Delete a vault, its objects and its key. Refused while a machine is protected
        into it; restore points that lived only there go, instant ones stay."""
        with self.rt.sessions.begin() as s:
            v = s.scalar(select(Vault).where(Vault.name == name))
            if v is None:
                raise FrostpointError("NotFound", f"no vault named {name!r}")
            items = list(s.execute(
                select(Machine.name, ProtectedItem).join(
                    ProtectedItem, ProtectedItem.machine_id == Machine.id)
                .where(ProtectedItem.vault_id == v.id)))
            users = [m for m, _ in items]
            soft = [m for m, item in items
                    if item.protection_state == ProtectionState.SOFT_DELETED]
            if soft:
                raise FrostpointError("Conflict", f"vault {name} holds the soft-deleted "
                                      f"item(s) of {', '.join(soft)}: they are purged "
                                      f"{v.soft_delete_days} days after their deletion, or "
                                      "undelete and disable them (frostpoint protect "
                                      "undelete M; frostpoint protect disable M) first",
                                      {"soft_deleted": soft})
            immutability.refuse_early_delete(v, s.scalars(select(RestorePoint).where(
                RestorePoint.vault_id == v.id)), utcnow(), "vault delete")
            if users:
                raise FrostpointError("Conflict", f"vault {name} holds the protection of "
                                      f"{', '.join(users)}: stop and disable their protection "
                                      "(frostpoint protect stop M; frostpoint protect disable "
                                      "M), or delete those machines, first",
                                      {"machines": users})
            vid, kind, location = v.id, v.backend, v.location
            forget_vault(s, vid)  # a restore point with a copy elsewhere moves there
            gone = 0
            for rp in s.scalars(select(RestorePoint).where(RestorePoint.vault_id == vid)):
                if rp.tier == RestorePointTier.VAULT:
                    s.delete(rp)
                    gone += 1
                else:
                    rp.tier, rp.vault_id, rp.vault_expires_at = (RestorePointTier.SNAPSHOT,
                                                                 None, None)
            s.delete(v)
        with self._stores_lock:
            self._stores.pop(vid, None)
        backend = self._backend(kind, location)
        objects = destroy(backend)  # the vault's own objects only
        if isinstance(backend, LocalBackend):
            backend.remove_leftovers(fmt.is_vault_object)
        (self.rt.keys_dir / f"{vid}.key").unlink(missing_ok=True)
        return {"deleted": name, "restore_points_deleted": gone, "objects_deleted": objects}

    # -- key export and import (disaster recovery) -----------------------------------
    def export_key(self, name: str, passphrase: str) -> dict[str, Any]:
        """The vault's key sealed under a passphrase: what `vault import` needs, with the
        vault's names and ids in clear (docs/operations.md, disaster recovery)."""
        with self.rt.sessions() as s:
            v = _by_name(s, Vault, name, "vault")
            vid, kind, location = v.id, v.backend, v.location
        store = self.store(vid)  # proves the key opens the vault before exporting it
        return keyfile.export_key(self.rt.vault_key(vid), passphrase, {
            "vault": name, "service_vault_id": vid, "vault_id": store.vault_id,
            "backend": kind, "location": location})

    def import_vault(self, name: str, backend: str, location: str, key_file: Any,
                     passphrase: str) -> dict[str, Any]:
        """Register an existing vault from its exported key, and list its restore points
        again (from its manifests) so they restore from the vault."""
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput",
                                  "vault names are 1-20 of a-z, 0-9, '-', starting a-z")
        key, head = keyfile.import_key(key_file, passphrase)
        if backend == "local":
            location = str(Path(location).resolve())
            if not (Path(location) / fmt.CONFIG).is_file():
                raise FrostpointError("NotFound", f"no vault at {location}",
                                      {"location": location})
        store = VaultStore.open(self._backend(backend, location), key)  # wrong key: refused
        if head.get("vault_id") not in (None, store.vault_id):
            raise FrostpointError("InvalidInput", f"the key file is for vault "
                                  f"{head.get('vault_id')}, {location} holds vault "
                                  f"{store.vault_id}")
        wanted = str(head.get("service_vault_id") or "")
        with self.rt.sessions.begin() as s:
            _refuse_taken(s, name, backend, location)
            # Keep the old id when free: the key file name and audit trails still match.
            free = re.fullmatch(r"[0-9a-f]{32}", wanted) and s.get(Vault, wanted) is None
            v = Vault(name=name, backend=backend, location=location,
                      **({"id": wanted} if free else {}))
            s.add(v)
            s.flush()
            vid = v.id
            # The key is durable before the vault is registered with it.
            self.rt.write_secret(f"{vid}.key", key)
        imported, damaged = self._import_restore_points(vid, store)
        with self._stores_lock:
            self._stores[vid] = store
        return {**self.describe_vault(vid), "restore_points_imported": imported,
                "damaged_manifests": damaged}

    def _import_restore_points(self, vid: str, store: VaultStore) -> tuple[int, list[str]]:
        """A restore_points row for each manifest that has none; `backup` records in the
        labels what the row needs (machine, consistency, disks)."""
        imported, damaged = 0, []
        for rp_id in store.list_restore_points():
            try:
                doc = store.read_manifest(rp_id)
            except VaultCorrupt:
                damaged.append(rp_id)
                continue
            except VaultError:
                continue  # deleted meanwhile, or a name that is no restore point id
            with self.rt.sessions.begin() as s:
                if s.get(RestorePoint, rp_id) is not None:
                    continue
                s.add(imported_restore_point(vid, rp_id, doc))
            imported += 1
        return imported, damaged

    def store(self, vault_id: str) -> VaultStore:
        with self._stores_lock:
            if vault_id not in self._stores:
                with self.rt.sessions() as s:
                    v = s.get(Vault, vault_id)
                    if v is None:
                        raise FrostpointError("NotFound", f"no vault with id {vault_id}")
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
                   "restore_points": count, "created_at": v.created_at.isoformat() + "Z",
                   "soft_delete": v.soft_delete, "soft_delete_days": v.soft_delete_days,
                   "immutability": v.immutability}
        store = self._stores.get(vid)  # opened vaults only: no storage call to list them
        return {**out, "block_size": store.config.block_size} if store else out

    def list_vaults(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            ids = list(s.scalars(select(Vault.id).order_by(Vault.name)))
        return [self.describe_vault(i) for i in ids]

    # -- protection ----------------------------------------------------------------
    def enable(self, machine: str, vault: str, policy: str,
               exclude_disks: list[str] | None = None) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            m = _by_name(s, Machine, machine, "machine")
            v = _by_name(s, Vault, vault, "vault")
            p = _by_name(s, Policy, policy, "policy")
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None:
                item = ProtectedItem(machine_id=m.id, vault_id=v.id, policy_id=p.id)
                s.add(item)
            else:
                if item.protection_state == ProtectionState.SOFT_DELETED:
                    raise FrostpointError("Conflict", f"protection of {machine} is "
                                          f"SoftDeleted: frostpoint protect undelete {machine}"
                                          " first", {"protection_state": item.protection_state})
                old = s.get(Policy, item.policy_id)
                if old is not None and item.vault_id == v.id:
                    refuse_shortening(s, item, retention_of(old), retention_of(p))
                item.vault_id, item.policy_id = v.id, p.id
                if item.protection_state in (ProtectionState.PROTECTION_STOPPED,
                                             ProtectionState.PROTECTION_PAUSED):
                    item.protection_state = ProtectionState.IR_PENDING
            if exclude_disks is not None:
                set_excluded(item, m, exclude_disks)
            self.collection_for(s, m)
        return self.describe_protection(machine)

    def update(self, machine: str, exclude_disks: list[str]) -> dict[str, Any]:
        """Change which disks the next backups leave out (service/selective.py)."""
        with self.rt.sessions.begin() as s:
            m, item = _protected(s, machine)
            set_excluded(item, m, exclude_disks)
        return self.describe_protection(machine)

    def set_state(self, machine: str, state: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            m, item = _protected(s, machine)
            if item.protection_state == ProtectionState.SOFT_DELETED:
                raise FrostpointError("Conflict", f"protection of {machine} is SoftDeleted: "
                                      f"frostpoint protect undelete {machine} first",
                                      {"protection_state": item.protection_state})
            if state == "resume":
                has_rp = s.scalar(select(func.count()).select_from(RestorePoint)
                                  .where(RestorePoint.machine_id == m.id))
                item.protection_state = (ProtectionState.PROTECTED if has_rp
                                         else ProtectionState.IR_PENDING)
            else:
                item.protection_state = state
        return self.describe_protection(machine)

    def disable(self, machine: str) -> dict[str, Any]:
        """Unprotect a machine whose protection is stopped: it no longer holds its vault,
        so the vault can be deleted. Its restore points stay where they are."""
        with self.rt.sessions.begin() as s:
            m = _by_name(s, Machine, machine, "machine")
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None:
                raise FrostpointError("UserErrorBcmDatasourceNotPresent",
                                      f"machine {machine} is not protected",
                                      {"machine": machine})
            if item.protection_state != ProtectionState.PROTECTION_STOPPED:
                raise FrostpointError("Conflict", f"protection of {machine} is "
                                      f"{item.protection_state}: stop it first with "
                                      f"`frostpoint protect stop {machine}`",
                                      {"machine": machine,
                                       "protection_state": item.protection_state})
            s.delete(item)
        return self.describe_protection(machine)

    def describe_protection(self, machine: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            m = _by_name(s, Machine, machine, "machine")
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None:
                return {"machine": machine, "protection_state": ProtectionState.NOT_PROTECTED}
            v, p = s.get(Vault, item.vault_id), s.get(Policy, item.policy_id)
            assert v is not None and p is not None
            return {"machine": machine, "protection_state": item.protection_state,
                    "vault": v.name, "policy": p.name, "excluded_disks": item.excluded_disks,
                    "last_backup_at": item.last_backup_at.isoformat() + "Z"
                    if item.last_backup_at else None,
                    "last_backup_status": item.last_backup_status,
                    "deleted_at": item.deleted_at.isoformat() + "Z" if item.deleted_at else None,
                    "purge_at": at.isoformat() + "Z" if (at := purge_at(item, v)) else None}

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


def _protected(s: Session, machine: str) -> tuple[Machine, ProtectedItem]:
    """The machine and its protected item; UserErrorBcmDatasourceNotPresent if it has
    none (update, stop and resume need protection)."""
    m = _by_name(s, Machine, machine, "machine")
    item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
    if item is None:
        raise FrostpointError("UserErrorBcmDatasourceNotPresent",
                              f"machine {machine} is not protected")
    return m, item
