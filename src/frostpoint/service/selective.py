"""Selective disks: a protected machine's disks that its backups leave out
(`protect enable M --exclude-disk logs`, `protect update`). A backup records the
disks it holds and those it left out on its restore point (service/backup.py);
`restore vm` makes the left-out ones empty, or refuses (service/restore.py)."""

from __future__ import annotations

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.models import Machine, ProtectedItem


def set_excluded(item: ProtectedItem, m: Machine, names: list[str]) -> None:
    """Exclude exactly these disks of m from item's next backups."""
    have = [d.name for d in m.disks]
    unknown = sorted(set(names) - set(have))
    if unknown:
        raise FrostpointError("NotFound", f"machine {m.name} has no disk "
                              f"{', '.join(unknown)}", {"disks": have})
    if have and set(have) <= set(names):
        raise FrostpointError("InvalidInput", f"every disk of {m.name} would be excluded: "
                              "a backup needs at least one disk")
    item.excluded_disks = sorted(set(names))
