"""Copies of restore points in other vaults (made by replication, service/replication.py),
as the vault's delete and the restores see them."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from frostpoint.service.models import Replication, RestorePoint, RestorePointCopy


def copy_vaults(s: Session, rp_id: str) -> list[str]:
    """The vault ids holding a copy of a restore point, oldest copy first."""
    return list(s.scalars(select(RestorePointCopy.vault_id).where(
        RestorePointCopy.restore_point_id == rp_id).order_by(RestorePointCopy.created_at)))


def forget_vault(s: Session, vault_id: str) -> None:
    """A vault being deleted: its schedules and the copies it held go, and a restore
    point whose own vault it was moves to its oldest copy, so it stays restorable."""
    for rep in s.scalars(select(Replication).where(or_(
            Replication.source_vault_id == vault_id,
            Replication.target_vault_id == vault_id))):
        s.delete(rep)
    for c in s.scalars(select(RestorePointCopy).where(RestorePointCopy.vault_id == vault_id)):
        s.delete(c)
    for rp in s.scalars(select(RestorePoint).where(RestorePoint.vault_id == vault_id)):
        copy = s.scalar(select(RestorePointCopy).where(
            RestorePointCopy.restore_point_id == rp.id,
            RestorePointCopy.vault_id != vault_id).order_by(RestorePointCopy.created_at))
        if copy is not None:
            rp.vault_id = copy.vault_id
            s.delete(copy)
    s.flush()
