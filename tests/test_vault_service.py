"""`frostpoint vault verify` on a real service: damage is named down to the file."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Service, needs_root
from frostpoint.vault.backend import LocalBackend
from frostpoint.vault.store import Vault

pytestmark = needs_root


def test_verify_names_the_damaged_chunk_its_restore_point_and_file(
        service: Service, tmp_path: Path) -> None:
    m = "vfy"
    service.protected_machine(m)
    service.exec(m, "head -c 6000000 /dev/urandom > /mnt/data/important.bin; "
                    "echo small > /mnt/data/notes.txt")
    job = service.backup(m)
    assert job["status"] == "Completed"
    rp = job["details"]["restore_point"]
    ok = service.cli_json("vault", "verify", "v1")
    assert ok["ok"] and ok["chunks_checked"] > 0
    assert service.cli_json("vault", "verify", "v1", "--sample", "50")["ok"]

    # Damage the biggest chunk (incompressible: a block of important.bin) on storage.
    vault_id = service.client.get("/vaults")[0]["id"]
    location = Path(service.client.get("/vaults")[0]["location"])
    key = (service.data_dir / "keys" / f"{vault_id}.key").read_bytes()
    v = Vault.open(LocalBackend(location), key)
    chunk, (pack_obj, off, length) = max(v._index.items(), key=lambda kv: kv[1][2])
    pack = location / pack_obj
    data = bytearray(pack.read_bytes())
    data[off + length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))

    p = service.cli("vault", "verify", "v1", "--json", check=False)
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert not report["ok"]
    [problem] = report["problems"]
    assert problem["chunk"] == chunk.hex() and problem["kind"] == "damaged"
    [affected] = problem["affects"]
    assert affected["restore_point"] == rp and affected["machine"] == m
    assert "/important.bin" in affected["files"]

    # A restore of that restore point from the vault fails clearly and leaves nothing.
    out = tmp_path / "restore"
    p = service.cli("restore", "disks", rp, "--to", str(out), "--source", "vault", "--json",
                    check=False)
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"]["code"] == "VaultDataCorrupt"
    assert not list(out.glob("*.img")) if out.exists() else True
    # The instant restore point is intact and still restores.
    j = service.cli_json("restore", "disks", rp, "--to", str(out), "--source", "instant")
    assert j["status"] == "Completed"


def test_vault_delete_removes_its_data_and_key_once_nothing_is_protected_into_it(
        service: Service) -> None:
    c = service.client
    c.post("/vaults", {"name": "gone"})
    c.post("/policies", {"name": "pg"})
    c.post("/machines", {"name": "vdel", "disks": [{"name": "data", "size": "32M"}]})
    c.post("/protection/enable", {"machine": "vdel", "vault": "gone", "policy": "pg"})
    service.wait_agent_ready("vdel")
    assert service.backup("vdel")["status"] == "Completed"
    vault = next(v for v in c.get("/vaults") if v["name"] == "gone")
    location, key = Path(vault["location"]), service.data_dir / "keys" / f"{vault['id']}.key"
    assert key.exists() and any(p.is_file() for p in location.rglob("*"))

    p = service.cli("vault", "delete", "gone", "--yes", "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["error"]["code"] == "Conflict"
    p = service.cli("vault", "delete", "gone", "--json", check=False)  # not confirmed
    assert p.returncode == 1 and json.loads(p.stdout)["error"]["code"] == "InvalidInput"
    assert any(v["name"] == "gone" for v in c.get("/vaults"))

    c.delete("/machines/vdel")
    out = service.cli_json("vault", "delete", "gone", "--yes")
    assert out["deleted"] == "gone" and out["restore_points_deleted"] == 1
    assert out["objects_deleted"] > 0
    assert not any(v["name"] == "gone" for v in c.get("/vaults"))
    assert not any(p.is_file() for p in location.rglob("*")) and not key.exists()
    assert not [r for r in c.get("/restore-points") if r["machine"] == "vdel"]
