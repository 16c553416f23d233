"""Key vaults: key-encryption keys and who may use them.

An encrypted disk's data key is made by the platform and kept only wrapped (AES key
wrap, RFC 3394) by a key vault key. The platform unwraps it under its own identity to
attach the disk; the backup service must be granted `get` and `unwrapKey` on the key
vault, like any other principal, before it may back the disk up or restore files from
it. A backup copies the wrapped key into the restore point.
"""

from __future__ import annotations

import builtins
import re
import secrets
from typing import Any

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from sqlalchemy import select
from sqlalchemy.orm import Session

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.fscrypt import KEY_BYTES
from frostpoint.service.models import KeyVault, KeyVaultGrant, KeyVaultKey
from frostpoint.service.runtime import Runtime

BACKUP_PRINCIPAL = "frostpoint-backup"  # the backup service's identity
PLATFORM = "frostpoint-platform"  # the fabric attaching disks: its own authority
NEEDED = ("get", "unwrapKey")
PERMISSIONS = {"get", "list", "wrapKey", "unwrapKey"}
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")


class KeyVaults:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @staticmethod
    def _vault(s: Session, name: str) -> KeyVault:
        kv = s.scalar(select(KeyVault).where(KeyVault.name == name))
        if kv is None:
            raise FrostpointError("NotFound", f"no key vault named {name!r}")
        return kv

    def _key(self, s: Session, key_ref: str) -> tuple[KeyVault, KeyVaultKey]:
        vault, _, key = key_ref.partition("/")
        kv = self._vault(s, vault)
        k = next((k for k in kv.keys if k.name == key), None)
        if k is None:
            raise FrostpointError("NotFound", f"key vault {vault} has no key {key!r}")
        return kv, k

    # -- management ----------------------------------------------------------------
    def create(self, name: str) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput", "key vault names are 1-63 of A-Z a-z 0-9 "
                                  "'-', starting with a letter")
        with self.rt.sessions.begin() as s:
            if s.scalar(select(KeyVault).where(KeyVault.name == name)):
                raise FrostpointError("Conflict", f"key vault {name} already exists")
            s.add(KeyVault(name=name))
        return self.show(name)

    def create_key(self, vault: str, name: str) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput", f"bad key name {name!r}")
        with self.rt.sessions.begin() as s:
            kv = self._vault(s, vault)
            if any(k.name == name for k in kv.keys):
                raise FrostpointError("Conflict", f"key {vault}/{name} already exists")
            k = KeyVaultKey(name=name)
            kv.keys.append(k)
            s.flush()
            self.rt.secret(f"kek-{k.id}.key", create=True)
        return self.show(vault)

    def grant(self, vault: str, principal: str = BACKUP_PRINCIPAL,
              permissions: list[str] | None = None) -> dict[str, Any]:
        perms = sorted(set(permissions or NEEDED))
        unknown = set(perms) - PERMISSIONS
        if unknown:
            raise FrostpointError("InvalidInput", f"unknown permission(s) {sorted(unknown)}; "
                                  f"use {sorted(PERMISSIONS)}")
        with self.rt.sessions.begin() as s:
            kv = self._vault(s, vault)
            g = next((g for g in kv.grants if g.principal == principal), None)
            if g is None:
                kv.grants.append(KeyVaultGrant(principal=principal, permissions=perms))
            else:
                g.permissions = sorted(set(g.permissions) | set(perms))
        return self.show(vault)

    def revoke(self, vault: str, principal: str = BACKUP_PRINCIPAL) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            kv = self._vault(s, vault)
            kv.grants = [g for g in kv.grants if g.principal != principal]
        return self.show(vault)

    def show(self, name: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            kv = self._vault(s, name)
            return {"name": kv.name, "keys": [k.name for k in kv.keys],
                    "grants": [{"principal": g.principal, "permissions": g.permissions}
                               for g in kv.grants]}

    def list(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            names = list(s.scalars(select(KeyVault.name).order_by(KeyVault.name)))
        return [self.show(n) for n in names]

    # -- use -------------------------------------------------------------------------
    def new_data_key(self, key_ref: str) -> tuple[bytes, str]:
        """A fresh disk data key and its wrapped form (hex), wrapped by key_ref."""
        dek = secrets.token_bytes(KEY_BYTES)
        with self.rt.sessions() as s:
            _, k = self._key(s, key_ref)
            kek = self.rt.secret(f"kek-{k.id}.key")
        return dek, aes_key_wrap(kek, dek).hex()

    def missing_access(self, key_ref: str, principal: str) -> builtins.list[str]:
        """The permissions principal lacks on key_ref's vault (none for the platform)."""
        if principal == PLATFORM:
            return []
        with self.rt.sessions() as s:
            kv, _ = self._key(s, key_ref)
            have = next((set(g.permissions) for g in kv.grants if g.principal == principal),
                        set())
        return [p for p in NEEDED if p not in have]

    def unwrap(self, key_ref: str, wrapped_hex: str, principal: str) -> bytes:
        missing = self.missing_access(key_ref, principal)
        if missing:
            vault = key_ref.partition("/")[0]
            raise FrostpointError(
                "UserErrorKeyvaultPermissionsNotConfigured",
                f"{principal} may not {' and '.join(missing)} key {key_ref}: frostpoint "
                f"keyvault grant {vault} --principal {principal}",
                {"key": key_ref, "principal": principal, "missing_permissions": missing})
        with self.rt.sessions() as s:
            _, k = self._key(s, key_ref)
            kek = self.rt.secret(f"kek-{k.id}.key")
        try:
            return aes_key_unwrap(kek, bytes.fromhex(wrapped_hex))
        except (InvalidUnwrap, ValueError) as e:
            raise FrostpointError("UserErrorKeyvaultPermissionsNotConfigured",
                                  f"key {key_ref} does not unwrap this disk's key "
                                  "(the key was replaced?)", {"key": key_ref}) from e
