"""Stop with delete data (soft delete, undelete, the purge) and immutable vaults, on a
real server with real sandbox machines and vaults, through the CLI.

Days pass by moving the service's clock (service/clock.py); the cleanup runs every
second here. A machine is written to while running, backed up by the snapshot
extension, then stopped: later backups are the host's own (crash-consistent), which
saves the heartbeat waits after each clock move."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root, running_service

pytestmark = needs_root
DAY = 86400


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    yield from running_service(FROSTPOINT_CLEANUP_S="1")


def eventually(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def refused(s: Service, *args: str) -> dict[str, Any]:
    """The error of a CLI command that must fail (exit 1, --json error on stdout)."""
    p = s.cli(*args, "--json", check=False)
    assert p.returncode == 1, (args, p.stdout, p.stderr)
    err: dict[str, Any] = json.loads(p.stdout)["error"]
    return err


def machine_with_backup(s: Service, name: str, vault: str, policy: str) -> tuple[str, str]:
    """A machine protected into vault with one backup of a known file; returns the
    restore point and the file's sha256. The machine is stopped afterwards."""
    s.cli_json("vm", "create", name, "--disk", "data:64M")
    s.cli_json("protect", "enable", name, "--vault", vault, "--policy", policy)
    s.wait_agent_ready(name)
    s.exec(name, "head -c 3000000 /dev/urandom > /mnt/data/keep.bin; sync")
    want = s.exec(name, "sha256sum /mnt/data/keep.bin").split()[0]
    job = s.cli_json("backup", "now", name, "--wait")
    assert job["status"] == "Completed", job
    s.cli_json("vm", "stop", name)
    return job["details"]["restore_point"], want


def rps(s: Service, machine: str) -> list[dict[str, Any]]:
    return list(s.cli_json("rp", "list", "--machine", machine))


def test_soft_delete_keeps_data_restorable_until_the_purge(service: Service,
                                                           tmp_path: Path) -> None:
    s = service
    s.cli_json("vault", "create", "sd")
    assert refused(s, "vault", "update", "sd", "--soft-delete-days", "13")["code"] == \
        "InvalidInput"
    assert s.cli_json("vault", "update", "sd", "--soft-delete-days", "14")[
        "soft_delete_days"] == 14
    # Kept one day only: a soft-deleted item's retention must stand still.
    s.cli_json("policy", "create", "brief", "--instant-days", "1", "--daily", "1")
    rp, want = machine_with_backup(s, "sdm", "sd", "brief")

    gone = s.cli_json("protect", "stop", "sdm", "--delete-data")
    assert gone["protection_state"] == "SoftDeleted" and gone["purge_at"], gone
    assert refused(s, "backup", "now", "sdm")["code"] == "UserErrorBcmDatasourceNotPresent"
    assert refused(s, "protect", "resume", "sdm")["code"] == "Conflict"
    err = refused(s, "vault", "delete", "sd", "--yes")
    assert err["code"] == "Conflict" and err["details"]["soft_deleted"] == ["sdm"], err

    s.move_clock(13 * DAY)  # past the policy's retention, inside the soft-delete period
    time.sleep(3)  # several cleanup passes
    assert [r["id"] for r in rps(s, "sdm")] == [rp], "purged or expired before the period"
    out = tmp_path / "from-soft-deleted"
    j = s.cli_json("restore", "files", rp, "--path", "keep.bin", "--to", str(out),
                   "--source", "vault")
    assert j["status"] == "Completed", j
    assert hashlib.sha256((out / "keep.bin").read_bytes()).hexdigest() == want

    assert s.cli_json("protect", "undelete", "sdm")["protection_state"] == "ProtectionStopped"
    # Protected, or IRPending once the cleanup has expired the one-day point again.
    assert s.cli_json("protect", "resume", "sdm")["protection_state"] in (
        "Protected", "IRPending")
    job = s.cli_json("backup", "now", "sdm", "--wait")
    assert job["status"] == "Completed", job
    new_rp = job["details"]["restore_point"]
    # Undeleted, its retention runs again: the old point (one day) goes, the new stays.
    eventually("the old point did not expire after undelete",
               lambda: [r["id"] for r in rps(s, "sdm")] == [new_rp])

    s.cli_json("protect", "stop", "sdm", "--delete-data")
    s.move_clock(14 * DAY - 3600)  # an hour before the purge: nothing goes
    time.sleep(3)
    assert [r["id"] for r in rps(s, "sdm")] == [new_rp]
    assert s.cli_json("protect", "show", "sdm")["protection_state"] == "SoftDeleted"
    s.move_clock(2 * 3600)
    eventually("not purged after the period", lambda: s.cli_json(
        "protect", "show", "sdm")["protection_state"] == "NotProtected")
    assert rps(s, "sdm") == []
    report = s.cli_json("vault", "verify", "sd")["details"]["report"]
    assert report["restore_points"] == 0 and report["ok"]
    assert s.cli_json("vault", "delete", "sd", "--yes")["deleted"] == "sd"

    s.cli_json("vault", "create", "sd2")
    assert s.cli_json("vault", "update", "sd2", "--soft-delete", "always-on")[
        "soft_delete"] == "AlwaysOn"
    assert refused(s, "vault", "update", "sd2", "--soft-delete", "off")["code"] == "Conflict"
    s.cli_json("vm", "delete", "sdm")


def test_an_immutable_vault_refuses_every_early_deletion(service: Service,
                                                          tmp_path: Path) -> None:
    s = service
    s.cli_json("vault", "create", "imm")
    s.cli_json("policy", "create", "keep", "--instant-days", "1", "--daily", "30")
    rp, want = machine_with_backup(s, "im", "imm", "keep")
    # Soft-deleted before the vault became immutable: the purge must then keep the data.
    s.cli_json("protect", "stop", "im", "--delete-data")
    v = s.cli_json("vault", "immutability", "imm", "enable")
    assert v["immutability"] == "Enabled"

    def immutable(err: dict[str, Any]) -> None:
        assert err["code"] == "UserErrorImmutableVault", err
        assert err["causes"] and err["actions"], err

    s.move_clock(15 * DAY)  # past the soft-delete period, within the 30 days
    time.sleep(3)
    assert [r["id"] for r in rps(s, "im")] == [rp], "the purge deleted retained data"
    assert "is immutable" in (s.data_dir / "server.log").read_text()
    s.cli_json("protect", "undelete", "im")
    immutable(refused(s, "protect", "stop", "im", "--delete-data"))
    immutable(refused(s, "rp", "delete", rp))
    immutable(refused(s, "policy", "update", "keep", "--daily", "5"))  # shortening
    s.cli_json("policy", "create", "short", "--daily", "2")
    immutable(refused(s, "protect", "enable", "im", "--vault", "imm", "--policy", "short"))
    longer = s.cli_json("policy", "update", "keep", "--daily", "60")  # longer is fine
    assert longer["vault_retention_days"] == 60
    # The instant copy may go (delete-collection); the vault copy stays and restores.
    s.cli_json("rp", "delete-collection", "im")
    [left] = rps(s, "im")
    assert left["id"] == rp and left["tier"] == "Vault"
    s.cli_json("protect", "stop", "im")
    s.cli_json("protect", "disable", "im")
    immutable(refused(s, "vault", "delete", "imm", "--yes"))
    out = tmp_path / "still-there"
    j = s.cli_json("restore", "files", rp, "--path", "keep.bin", "--to", str(out))
    assert j["status"] == "Completed", j
    assert hashlib.sha256((out / "keep.bin").read_bytes()).hexdigest() == want

    assert s.cli_json("vault", "immutability", "imm", "lock")["immutability"] == "Locked"
    immutable(refused(s, "vault", "immutability", "imm", "disable"))
    s.cli_json("vm", "delete", "im")  # the machine goes; its vault copy stays listed
    assert [r["id"] for r in s.cli_json("rp", "list")] == [rp]
    immutable(refused(s, "rp", "delete", rp))


def test_policy_commands_through_the_cli(service: Service) -> None:
    s = service
    err = refused(s, "policy", "create", "toomany", "--schedule", "hourly", "--every", "4h",
                  "--instant-days", "3")
    assert err["code"] == "InvalidInput" and "18" in err["message"], err
    p = s.cli_json("policy", "create", "enh", "--schedule", "hourly", "--every", "6h",
                   "--time", "06:00", "--window-hours", "12", "--instant-days", "4",
                   "--daily", "10", "--weekly", "2", "--weekly-on", "sat", "--monthly", "1",
                   "--monthly-on", "last", "--yearly", "2", "--yearly-in", "jun")
    assert (p["schedule"], p["every_hours"], p["window_hours"]) == ("hourly", 6, 12)
    assert p["instant_restore_points_peak"] == 9  # 06:00 and 12:00, 4 days, one more
    preview = s.cli_json("policy", "preview", "enh", "--days", "30")
    assert len(preview["days"]) == 30
    assert all(len(d["restore_points"]) <= 2 * 30 and d["instant"] <= 9
               for d in preview["days"])
    assert len(preview["days"][-1]["restore_points"]) >= 20  # 10 days x 2, and more
    human = s.cli("policy", "preview", "enh", "--days", "3").stdout
    assert preview["days"][0]["date"] in human and "restore_points" in human
    assert s.cli_json("policy", "show", "enh")["weekly_on"] == "sat"
    assert "enh" in [x["name"] for x in s.cli_json("policy", "list")]
    changed = s.cli_json("policy", "update", "enh", "--daily", "12")
    assert changed["vault_retention_days"] == 12 and "next cleanup" in changed["note"]
    assert s.cli_json("policy", "delete", "enh") == {"deleted": "enh"}
    assert refused(s, "policy", "show", "enh")["code"] == "NotFound"
