"""restore disks --replace (with a rollback from a failure made for real midway) and
selective disks (protect --exclude-disk; restore vm --missing-disks), on sandbox
machines with a real vault."""

from __future__ import annotations

from pathlib import Path

from conftest import Service, needs_root
from frostpoint.vault.backend import LocalBackend
from frostpoint.vault.store import Vault as VaultStore

pytestmark = needs_root
M = "rep"
DISKS = [{"name": "data", "size": "64M"}, {"name": "extra", "size": "64M"}]


def content(s: Service, machine: str = M) -> tuple[str, str]:
    return (s.exec(machine, "cat /mnt/data/f").strip(),
            s.exec(machine, "cat /mnt/extra/f").strip())


def write(s: Service, text: str) -> None:
    s.exec(M, f"echo {text} > /mnt/data/f && echo {text} > /mnt/extra/f && "
              "head -c 3000000 /dev/urandom > /mnt/extra/noise && sync")


def damage_a_chunk(s: Service, rp: str, disk: str) -> None:
    """Flip a byte in the vault's copy of the first data block of rp's disk: a real
    damaged pack on storage, found by the restore when it reads that disk."""
    v = next(v for v in s.client.get("/vaults") if v["name"] == "v1")
    key = (s.data_dir / "keys" / f"{v['id']}.key").read_bytes()
    store = VaultStore.open(LocalBackend(v["location"]), key)
    blocks = store.read_manifest(rp)["disks"][disk]["blocks"]
    loc = store.locate_chunk(next(b for b in blocks if b))
    assert loc is not None
    pack_id, off, length = loc
    pack = Path(v["location"]) / "packs" / pack_id[:2] / pack_id
    with open(pack, "r+b") as f:
        f.seek(off + length - 20)
        b = f.read(1)
        f.seek(off + length - 20)
        f.write(bytes([b[0] ^ 0xFF]))


def test_replace_swaps_the_disks_then_a_failure_midway_rolls_back(service: Service) -> None:
    s = service
    s.protected_machine(M, DISKS)
    write(s, "first")
    job = s.backup(M)
    assert job["status"] == "Completed", job
    rp = job["details"]["restore_point"]
    write(s, "second")

    # A running machine is refused without --stop, before any job.
    r = s.cli_json("restore", "disks", rp, "--replace", check=False)
    assert r["error"]["code"] == "UserErrorMachineRunning"
    j = s.cli_json("restore", "disks", rp, "--replace", "--stop")
    assert j["status"] == "Completed", j
    assert j["operation"] == "RestoreReplace"
    assert s.client.get(f"/machines/{M}")["power_state"] == "Running"
    assert content(s) == ("first", "first")
    safety = j["details"]["safety_restore_point"]
    rps = {p["id"]: p for p in s.client.get("/restore-points", params={"machine": M})}
    assert rps[safety]["tier"] == "Snapshot"
    # The safety point holds the disks as they were before the swap.
    out = s.data_dir / "restores" / "safety"
    j = s.cli_json("restore", "files", safety, "--disk", "extra", "--path", "f",
                   "--to", str(out))
    assert j["status"] == "Completed", j
    assert (out / "f").read_text().strip() == "second"

    # Now a failure midway: disk data restores, disk extra's vault chunk is damaged.
    write(s, "third")
    damage_a_chunk(s, rp, "extra")
    j = s.cli_json("restore", "disks", rp, "--replace", "--stop", "--source", "vault",
                   check=False)
    assert j["status"] == "Failed", j
    assert j["error"]["code"] == "RestoreReplaceRolledBack", j["error"]
    assert j["error"]["details"]["cause"]["code"] == "VaultDataCorrupt"
    assert j["details"]["rolled_back"] is True
    swap = next(t for t in j["subtasks"] if t["name"] == "Replace disks")
    assert swap["progress"]["disks_done"] == ["data"]  # it failed midway, after data
    # data was swapped before extra failed: it is back too, and the machine runs.
    assert s.client.get(f"/machines/{M}")["power_state"] == "Running"
    s.wait_agent_ready(M)
    assert content(s) == ("third", "third")


def test_an_excluded_disk_is_not_backed_up_and_restore_vm_refuses_or_empties_it(
        service: Service) -> None:
    s = service
    name = "sel"
    s.client.post("/machines", {"name": name, "disks": [{"name": "data", "size": "64M"},
                                                        {"name": "logs", "size": "64M"}]})
    if not any(v["name"] == "v1" for v in s.client.get("/vaults")):
        s.client.post("/vaults", {"name": "v1"})
        s.client.post("/policies", {"name": "p1"})
    p = s.cli_json("protect", "enable", name, "--vault", "v1", "--policy", "p1",
                   "--exclude-disk", "logs")
    assert p["excluded_disks"] == ["logs"]
    bad = s.cli_json("protect", "update", name, "--exclude-disk", "nosuch", check=False)
    assert bad["error"]["code"] == "NotFound"
    s.wait_agent_ready(name)
    s.exec(name, "echo kept > /mnt/data/f && echo secret > /mnt/logs/f && sync")
    job = s.backup(name)
    assert job["status"] == "Completed", job
    rp = next(r for r in s.client.get("/restore-points", params={"machine": name})
              if r["id"] == job["details"]["restore_point"])
    assert [d["name"] for d in rp["disks"]] == ["data"]
    assert [d["name"] for d in rp["excluded_disks"]] == ["logs"]

    refused = s.cli_json("restore", "vm", rp["id"], "--name", "sel2", check=False)
    assert refused["error"]["code"] == "InvalidInput"
    assert "logs" in refused["error"]["message"]
    j = s.cli_json("restore", "vm", rp["id"], "--name", "sel2", "--missing-disks", "empty",
                   "--source", "vault")
    assert j["status"] == "Completed", j
    s.wait_agent_ready("sel2")
    assert s.exec("sel2", "cat /mnt/data/f").strip() == "kept"
    # logs is there, new and empty: nothing of the guest's logs disk was kept.
    assert s.exec("sel2", "ls -A /mnt/logs | grep -v lost+found || true").strip() == ""

    # protect update --all-disks takes it again.
    assert s.cli_json("protect", "update", name, "--all-disks")["excluded_disks"] == []
    job = s.backup(name)
    assert job["status"] == "Completed", job
    rp2 = next(r for r in s.client.get("/restore-points", params={"machine": name})
               if r["id"] == job["details"]["restore_point"])
    assert sorted(d["name"] for d in rp2["disks"]) == ["data", "logs"]
    assert rp2["excluded_disks"] == []
