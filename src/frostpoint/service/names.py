"""The names and sizes the management API accepts for machines and vaults, and the
lookup of a named object."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from frostpoint.errors.catalog import FrostpointError

# Machines and vaults: a name also names namespaces, links and folders on the host.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
SIZE_RE = re.compile(r"^(\d+)([KMGT]?)$")


def parse_size(text: str) -> int:
    m = SIZE_RE.match(text.strip().upper())
    if not m:
        raise FrostpointError("InvalidInput", f"bad size {text!r}: use e.g. 256M or 2G")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def by_name(s: Session, model: Any, name: str, what: str) -> Any:
    """The object of model named name, or NotFound naming what it is."""
    obj = s.scalar(select(model).where(model.name == name))
    if obj is None:
        raise FrostpointError("NotFound", f"no {what} named {name!r}")
    return obj
