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
