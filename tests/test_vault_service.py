"""`frostpoint vault verify` on a real service: damage is named down to the file."""

from __future__ import annotations

import json
import re
import subprocess
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
    ok = service.cli_json("vault", "verify", "v1")["details"]["report"]
    assert ok["ok"] and ok["chunks_checked"] > 0
    half = service.cli_json("vault", "verify", "v1", "--sample", "50")
    assert half["details"]["report"]["ok"]

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
    job = json.loads(p.stdout)  # the final job; the report in its details
    assert job["status"] == "CompletedWithWarnings"
    assert job["warnings"][0]["code"] == "VaultDataCorrupt"
    report = job["details"]["report"]
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


def test_verify_maps_a_damaged_chunk_of_a_1m_block_vault_to_its_file_only(
        service: Service, tmp_path: Path) -> None:
    c = service.client
    c.post("/vaults", {"name": "v1m", "block_size": "1M"})
    c.post("/policies", {"name": "p1m"})
    m = "vfy1m"
    c.post("/machines", {"name": m, "disks": [{"name": "data", "size": "64M"}]})
    c.post("/protection/enable", {"machine": m, "vault": "v1m", "policy": "p1m"})
    service.wait_agent_ready(m)
    # Four incompressible files of 3 MiB, laid out one after another.
    service.exec(m, "for i in 0 1 2 3; do head -c 3145728 /dev/urandom > /mnt/data/f$i; "
                    "done; sync")
    job = service.backup(m)
    assert job["status"] == "Completed"
    rp = job["details"]["restore_point"]
    vault = next(v for v in c.get("/vaults") if v["name"] == "v1m")
    assert vault["block_size"] == 1 << 20

    # Where the files are on the disk: in the instant restore point's image.
    out = tmp_path / "img"
    assert service.cli_json("restore", "disks", rp, "--to", str(out),
                            "--source", "instant")["status"] == "Completed"
    img = str(out / "data.img")
    head = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True,
                          check=True).stdout
    fs_block = int(re.search(r"^Block size:\s+(\d+)", head, re.M).group(1))  # type: ignore
    # Byte ranges of each file on the disk, from its extents.
    spans: list[tuple[int, int, str]] = []
    for i in range(4):
        ex = subprocess.run(["debugfs", "-R", f"ex /f{i}", img], capture_output=True,
                            text=True, check=True).stdout
        for lo, hi in re.findall(r"\d+\s*-\s*\d+\s+(\d+)\s*-\s*(\d+)\s+\d+", ex):
            spans.append((int(lo) * fs_block, (int(hi) + 1) * fs_block, f"/f{i}"))

    def owners(start: int, length: int) -> set[str]:
        return {f for lo, hi, f in spans if lo < start + length and hi > start}

    # A 1 MiB block owned by one file whose next 3 MiB reach another file: mapped
    # with 4 MiB, the damage would be blamed on both.
    mib = 1 << 20
    offset = next(j * mib for j in range(64) if len(owners(j * mib, mib)) == 1
                  and len(owners(j * mib, 4 * mib)) > 1)
    [victim] = owners(offset, mib)
    key = (service.data_dir / "keys" / f"{vault['id']}.key").read_bytes()
    location = Path(vault["location"])
    v = Vault.open(LocalBackend(location), key)
    h = v.read_manifest(rp)["disks"]["data"]["blocks"][offset // (1 << 20)]
    pack_id, off, length = v.locate_chunk(h)
    pack = next(location.glob(f"packs/*/{pack_id}"))
    data = bytearray(pack.read_bytes())
    data[off + length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))

    report = json.loads(service.cli("vault", "verify", "v1m", "--json",
                                    check=False).stdout)["details"]["report"]
    [problem] = report["problems"]
    assert problem["chunk"] == h
    [affected] = problem["affects"]
    assert affected["files"] == [victim], affected
    c.delete(f"/machines/{m}")
