"""The error catalog: complete, documented, printed by `frostpoint errors`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from frostpoint.errors.catalog import CATALOG
from frostpoint.errors.docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_of_the_shared_catalog_is_in_the_code() -> None:
    shared = ROOT.parent / "shared" / "ERRORS.md"
    if not shared.exists():
        shared = ROOT / "docs" / "errors.md"  # a clone without shared/ beside it
    codes = set(re.findall(r"\b((?:UserError|GuestAgent|Extension|BackUp|Insufficient|"
                           r"Incorrect|Pre-|Post-)[A-Za-z0-9-]+)(?![.\w])", shared.read_text()))
    # Codes are CamelCase (two capitals at least); "Extensions are ..." is prose.
    codes = {c for c in codes if sum(ch.isupper() for ch in c) >= 2}
    missing = sorted(c for c in codes if c not in CATALOG)
    assert not missing, f"codes in ERRORS.md but not in the catalog: {missing}"


def test_every_entry_has_causes_and_actions() -> None:
    for spec in CATALOG.values():
        assert spec.message and spec.causes, spec.code
        assert spec.kind in ("user", "internal")


def test_docs_errors_md_is_generated_from_the_catalog() -> None:
    assert (ROOT / "docs" / "errors.md").read_text() == render(), (
        "docs/errors.md is stale: python -m frostpoint.errors.docs > docs/errors.md")


def test_frostpoint_errors_prints_one_code_as_json() -> None:
    p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", "errors",
                        "UserErrorRpCollectionLimitReached", "--json"],
                       capture_output=True, text=True, check=True)
    e = json.loads(p.stdout)
    assert e["code"] == "UserErrorRpCollectionLimitReached"
    assert any("lock delete" in a for a in e["actions"])
    p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", "errors", "Nope"],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 1 and "NotFound" in p.stderr


def test_every_code_has_an_http_status() -> None:
    # The API answers a failed request with its code's status (service/api.py reads it
    # from the spec); there is no other table of statuses to drift from this one.
    for spec in CATALOG.values():
        assert isinstance(spec.http_status, int) and 400 <= spec.http_status < 600, spec.code
    assert {c: CATALOG[c].http_status for c in (
        "NotFound", "Conflict", "InvalidInput", "Unauthorized", "AuthorizationFailed",
        "UserErrorBackupOperationInProgress", "VaultDataCorrupt")} == {
        "NotFound": 404, "Conflict": 409, "InvalidInput": 422, "Unauthorized": 401,
        "AuthorizationFailed": 403, "UserErrorBackupOperationInProgress": 409,
        "VaultDataCorrupt": 400}
