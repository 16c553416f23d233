"""The service's edge to the vault: each vault exception becomes a catalog error.

The vault raises its own exceptions (vault/errors.py) and knows no catalog codes; the
API's exception handler and the job runner call catalog_error, so a user still sees
one catalog code for every failure."""

from __future__ import annotations

from frostpoint.errors.catalog import FrostpointError
from frostpoint.vault.errors import (
    AlreadyExists,
    Cancelled,
    DiskReadFailed,
    InvalidRequest,
    KeyFileInvalid,
    NotInVault,
    VaultCorrupt,
    VaultError,
)

# Most specific first is not needed: catalog_error walks the exception's own class
# hierarchy (ChunkMissing -> VaultCorrupt, WrongKey -> InvalidRequest).
CODES: dict[type[VaultError], str] = {
    VaultCorrupt: "VaultDataCorrupt",
    Cancelled: "JobCancelled",
    NotInVault: "NotFound",
    AlreadyExists: "Conflict",
    InvalidRequest: "InvalidInput",
    KeyFileInvalid: "VaultKeyInvalid",
    DiskReadFailed: "BackUpOperationFailed",
}


def catalog_error(e: VaultError) -> FrostpointError:
    for cls in type(e).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return FrostpointError(code, e.detail, e.details)
    return FrostpointError("BackUpOperationFailed", f"vault error: {e.detail}", e.details)


def as_catalog(e: FrostpointError | VaultError) -> FrostpointError:
    return e if isinstance(e, FrostpointError) else catalog_error(e)
