"""Encrypted disks (ext4 + fscrypt) whose data key is wrapped by a key vault key: the
platform stores only ciphertext, a backup needs the backup service's access to the key
(UserErrorKeyvaultPermissionsNotConfigured until it is granted), and the restore point
carries the wrapped key so that files and whole machines restore readable."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Service, needs_root

pytestmark = needs_root
SECRET = b"customer ledger 4711"


def test_encrypted_disk_backup_needs_a_key_grant_and_restores_readable(
        service: Service, tmp_path: Path) -> None:
    s, c = service, service.client
    s.cli_json("keyvault", "create", "kv1")
    s.cli_json("keyvault", "key-create", "kv1", "disks")
    s.cli_json("vm", "create", "enc", "--disk", "data:64M", "--encryption-key", "kv1/disks")
    c.post("/vaults", {"name": "v1"})
    c.post("/policies", {"name": "p1"})
    c.post("/protection/enable", {"machine": "enc", "vault": "v1", "policy": "p1"})
    s.wait_agent_ready("enc")
    s.exec("enc", f"echo '{SECRET.decode()}' > /mnt/data/ledger.txt; sync")
    shown = s.cli_json("vm", "show", "enc")["disks"][0]
    assert shown["encrypted"] and shown["encryption_key"] == "kv1/disks"
    # The platform holds ciphertext only: neither the words nor the file name are in
    # the disk image.
    raw = (s.data_dir / "pool" / "disks" / "enc" / "data.img").read_bytes()
    assert SECRET not in raw and b"ledger.txt" not in raw

    # The key vault does not let the backup service in yet.
    job = s.backup("enc")
    assert job["status"] == "Failed", job
    err = job["error"]
    assert err["code"] == "UserErrorKeyvaultPermissionsNotConfigured"
    assert err["details"]["missing_permissions"] == ["get", "unwrapKey"]
    assert any("keyvault grant" in a for a in err["actions"])
    report = json.loads(s.cli("doctor", "enc", "--json", check=False).stdout)
    key = next(f for f in report["findings"] if f["check"] == "disk.data.key")
    assert key["status"] == "fail" and key["code"] == err["code"]
    assert key["fix"] == ["frostpoint keyvault grant kv1 --principal frostpoint-backup"]
    # A grant lets the service read the disk's data: the doctor asks before it.
    fixed = json.loads(s.cli("doctor", "enc", "--fix", "--json", check=False).stdout)
    [asked] = [a for a in fixed["applied"] if a["check"] == "disk.data.key"]
    assert asked["result"] == "skipped (risky)"

    s.cli_json("keyvault", "grant", "kv1")  # the recommended action
    job = s.backup("enc")
    assert job["status"] == "Completed", job
    assert job["details"]["consistency"] == "FileSystemConsistent"  # the volume froze
    rp_id = job["details"]["restore_point"]
    [rp] = [r for r in c.get("/restore-points", params={"machine": "enc"}) if r["id"] == rp_id]
    assert rp["disks"][0]["encryption_key"] == "kv1/disks" and rp["disks"][0]["wrapped_key"]

    # Files come back readable from the vault copy (the service unwraps the key).
    out = tmp_path / "files"
    j = s.cli_json("restore", "files", rp_id, "--path", "ledger.txt", "--to", str(out),
                   "--source", "vault")
    assert j["status"] == "Completed", j
    assert (out / "ledger.txt").read_bytes().strip() == SECRET
    # Without the grant, a file restore is refused with the same code.
    s.cli_json("keyvault", "revoke", "kv1")
    p = s.cli("restore", "files", rp_id, "--path", "ledger.txt", "--to", str(out / "again"),
              "--source", "vault", "--json", check=False)
    assert "UserErrorKeyvaultPermissionsNotConfigured" in p.stdout
    assert not (out / "again" / "ledger.txt").exists()
    s.cli_json("keyvault", "grant", "kv1")

    # A whole machine restored from the vault gets the same wrapped key and boots readable.
    j = s.cli_json("restore", "vm", rp_id, "--name", "enc2", "--source", "vault")
    assert j["status"] == "Completed", j
    assert s.cli_json("vm", "show", "enc2")["disks"][0]["encryption_key"] == "kv1/disks"
    assert s.exec("enc2", "cat /mnt/data/ledger.txt").strip().encode() == SECRET
    raw = (s.data_dir / "pool" / "disks" / "enc2" / "data.img").read_bytes()
    assert SECRET not in raw
    for m in ("enc", "enc2"):
        c.delete(f"/machines/{m}")


def test_encrypted_disk_over_4_tib_gives_unsupported_disk_size(service: Service) -> None:
    s, c = service, service.client
    s.cli_json("keyvault", "create", "kv2")
    s.cli_json("keyvault", "key-create", "kv2", "disks")
    s.cli_json("keyvault", "grant", "kv2")
    s.cli_json("vm", "create", "bigenc", "--disk", "data:32M", "--disk", "huge:5T",
               "--encryption-key", "kv2/disks")  # 5 TiB: fine unencrypted, not encrypted
    if not any(v["name"] == "v2" for v in c.get("/vaults")):
        c.post("/vaults", {"name": "v2"})
        c.post("/policies", {"name": "p2"})
    c.post("/protection/enable", {"machine": "bigenc", "vault": "v2", "policy": "p2"})
    s.wait_agent_ready("bigenc")
    job = s.backup("bigenc")
    assert job["status"] == "Failed" and job["error"]["code"] == "UserErrorUnsupportedDiskSize"
    assert str(4 << 40) in job["error"]["message"]
    report = json.loads(s.cli("doctor", "bigenc", "--json", check=False).stdout)
    huge = next(f for f in report["findings"] if f["check"] == "disk.huge")
    assert huge["status"] == "fail" and "4 TiB limit" in huge["message"]
    s.cli_json("vm", "disk", "delete", "bigenc", "huge")  # split: the data moves away
    s.wait_agent_ready("bigenc")
    assert s.backup("bigenc")["status"] == "Completed"
    c.delete("/machines/bigenc")
