"""Vault names, locations and delete; key files (issue 9, 2.2 and 2.3) on a real service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root, running_service
from frostpoint.cli.client import ApiError
from frostpoint.vault.azure import AzureBlobBackend
from test_vault_azure import azurite  # noqa: F401 - the Azurite fixture

pytestmark = needs_root


def api_error(call: Callable[..., Any], *args: Any) -> dict[str, Any]:
    with pytest.raises(ApiError) as e:
        call(*args)
    return e.value.error


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    yield from running_service()


def test_a_vault_name_that_walks_out_of_the_data_dir_is_refused(svc: Service) -> None:
    outside = svc.data_dir.parent / "x"
    for name in ("../../x", "../x", "a/b", "UPPER", "", "x" * 21, ".hidden"):
        err = api_error(svc.client.post, "/vaults", {"name": name})
        assert err["code"] == "InvalidInput", (name, err)
    assert not outside.exists()
    assert not svc.client.get("/vaults")


def test_create_refuses_a_location_holding_foreign_files(svc: Service, tmp_path: Path) -> None:
    loc = tmp_path / "photos"
    loc.mkdir()
    (loc / "holiday.jpg").write_bytes(b"precious")
    err = api_error(svc.client.post, "/vaults", {"name": "foreign", "location": str(loc)})
    assert err["code"] == "Conflict"
    assert (loc / "holiday.jpg").read_bytes() == b"precious"
    assert not any(v["name"] == "foreign" for v in svc.client.get("/vaults"))
    # An empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    v = svc.client.post("/vaults", {"name": "empty-ok", "location": str(empty)})
    assert Path(v["location"]) == empty.resolve()
    svc.client.delete("/vaults/empty-ok")


def test_delete_leaves_foreign_files_in_the_location(svc: Service, tmp_path: Path) -> None:
    loc = tmp_path / "shared"
    svc.client.post("/vaults", {"name": "shared", "location": str(loc)})
    assert (loc / "config").is_file()
    (loc / "README.txt").write_text("not the vault's")
    (loc / "manifests" / "notes").mkdir(parents=True)
    (loc / "manifests" / "notes" / "todo").write_text("nor this")
    (loc / "packs" / "zz").mkdir(parents=True)
    (loc / "packs" / "zz" / "mine.bin").write_text("nor this")
    (loc / ".config.k2j4h5.tmp").write_text("a put that a crash cut short")
    (loc / ".holiday.jpg.x1.tmp").write_text("someone else's temp file")
    out = svc.client.delete("/vaults/shared")
    assert out["deleted"] == "shared"
    assert (loc / "README.txt").read_text() == "not the vault's"
    assert (loc / "manifests" / "notes" / "todo").read_text() == "nor this"
    assert (loc / "packs" / "zz" / "mine.bin").read_text() == "nor this"
    assert not (loc / "config").exists() and not (loc / ".config.k2j4h5.tmp").exists()
    assert (loc / ".holiday.jpg.x1.tmp").exists()
    assert not (loc / "index").exists()  # emptied folders of the vault go


def test_a_deleted_vault_can_be_made_again_in_its_default_place(svc: Service) -> None:
    v = svc.client.post("/vaults", {"name": "again"})
    (Path(v["location"]) / ".config.a1b2c3.tmp").write_text("cut short")
    svc.client.delete("/vaults/again")
    assert not Path(v["location"]).exists()
    assert svc.client.post("/vaults", {"name": "again"})["location"] == v["location"]
    svc.client.delete("/vaults/again")


def test_overlapping_vault_locations_are_refused(svc: Service, tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    svc.client.post("/vaults", {"name": "outer", "location": str(outer)})
    try:
        for name, loc in (("inner", outer / "inner"), ("same", outer),
                          ("dotted", outer / "sub" / ".." / "again")):
            err = api_error(svc.client.post, "/vaults", {"name": name, "location": str(loc)})
            assert err["code"] == "Conflict", (loc, err)
        # A location that holds an existing vault is refused as well.
        err = api_error(svc.client.post, "/vaults", {"name": "parent",
                                                     "location": str(tmp_path)})
        assert err["code"] == "Conflict"
        names = {v["name"] for v in svc.client.get("/vaults")}
        assert not names & {"inner", "same", "dotted", "parent"}
    finally:
        svc.client.delete("/vaults/outer")


def test_a_truncated_vault_key_gives_a_clear_error(svc: Service) -> None:
    v = svc.client.post("/vaults", {"name": "short-key"})
    try:
        key = svc.data_dir / "keys" / f"{v['id']}.key"
        assert len(key.read_bytes()) == 32
        assert not [p for p in key.parent.iterdir() if p.name.startswith(".")]
        key.write_bytes(key.read_bytes()[:7])
        svc.stop()  # the running service holds the opened vault
        svc.start()
        err = api_error(svc.client.post, "/vaults/short-key/verify")
        assert err["code"] == "VaultKeyInvalid", err
        assert v["id"] in err["message"]
    finally:
        svc.client.delete("/vaults/short-key")


@pytest.fixture(scope="module")
def az_svc(azurite: str) -> Iterator[Service]:  # noqa: F811
    yield from running_service(FP_AZURE_CONN=azurite)


def test_azure_prefixes_may_not_overlap_and_delete_spares_foreign_blobs(
        az_svc: Service, azurite: str) -> None:  # noqa: F811
    c = az_svc.client

    def loc(path: str) -> str:
        return f"azure://shared{path}?connection_string_env=FP_AZURE_CONN"

    c.post("/vaults", {"name": "site-a", "backend": "azure", "location": loc("/site/a")})
    try:
        for name, where in (("whole", ""), ("parent", "/site"), ("same", "/site/a"),
                            ("child", "/site/a/b")):
            err = api_error(c.post, "/vaults", {"name": name, "backend": "azure",
                                                "location": loc(where)})
            assert err["code"] == "Conflict", (where, err)
        # A sibling prefix is fine: "site/ab" is not inside "site/a".
        c.post("/vaults", {"name": "site-ab", "backend": "azure",
                           "location": loc("/site/ab")})
        c.delete("/vaults/site-ab")
        foreign = AzureBlobBackend(azurite, "shared", "site/a")
        foreign.put("notes/readme.txt", b"someone else's")
        foreign.put("manifests/sub/x", b"nor a manifest")
        assert c.delete("/vaults/site-a")["deleted"] == "site-a"
        assert foreign.list("") == ["manifests/sub/x", "notes/readme.txt"]
        # Now that prefix holds foreign blobs: a new vault is refused there.
        err = api_error(c.post, "/vaults", {"name": "again", "backend": "azure",
                                            "location": loc("/site/a")})
        assert err["code"] == "Conflict"
        foreign.delete("notes/readme.txt")
        foreign.delete("manifests/sub/x")
    finally:
        if any(v["name"] == "site-a" for v in c.get("/vaults")):
            c.delete("/vaults/site-a")
