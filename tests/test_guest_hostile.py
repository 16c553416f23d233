"""A guest is hostile: what it sends the host endpoints, and what it leaves on its
disks, must not hurt the host, other machines, or its own restore points. Each test
makes the attack from inside a real machine (its own token is readable there), and
checks what a user would notice."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Service, needs_root, sha256_file

pytestmark = needs_root
# The guest's own python, as the agent's: httpx comes from the agent package's vendor
# folder (its .pth file), the host's python and venv are not in the machine.
PY = "/usr/bin/python3"


def guest_python(s: Service, machine: str, code: str, timeout: float = 120) -> Any:
    """Run code inside machine; it prints one JSON value, which is returned."""
    path = s.guest_file(machine, "etc") / "probe.py"
    path.write_text(code)
    r = s.client.post(f"/machines/{machine}/exec", {
        "argv": [PY, "/etc/frostpoint/probe.py"], "timeout": timeout})
    assert r["returncode"] == 0, r["stderr"]
    return json.loads(r["stdout"].strip().splitlines()[-1])


GUEST_CLIENT = """
import json, sys, time, httpx
TOKEN = open("/etc/frostpoint/agent.token").read().strip()
H = {"Authorization": "Bearer " + TOKEN}
WIRE, HOST = "http://10.213.0.1:80", "http://10.213.0.1:32526"
"""


def iso(t: str) -> float:
    return datetime.fromisoformat(t.removesuffix("Z") + "+00:00").timestamp()


def restore_job(s: Service, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return s.wait_job(s.client.post(f"/restores/{kind}", body)["id"])


# -- POST /snapshot: once per task, only while Take Snapshot runs (2.1) ----------------
REPLAYER = GUEST_CLIENT + """
# Replay the task's snapshot request as fast as possible for a while, recording each
# answer with the time it came: during Take Snapshot (after the real one), during the
# transfer to the vault, and after the job.
state = json.load(open("/var/lib/frostpoint-agent/agent-state.json"))
task = next(e["settings"]["taskId"] for e in state["extensions"]
            if e["name"] == "Frostpoint.Backup.Snapshot")
out = open("/var/lib/frostpoint-agent/replay.log", "w")
end = time.time() + float(sys.argv[1])
with httpx.Client(base_url=HOST, headers=H, timeout=10) as c:
    while time.time() < end:
        r = c.post("/snapshot", json={"taskId": task, "frozen": True})
        code = r.json().get("code") if r.status_code != 200 else None
        out.write(json.dumps([time.time(), r.status_code, code]) + "\\n")
        out.flush()
        time.sleep(0.02)
out.write("done\\n")
"""


def test_snapshot_replay_from_the_guest_is_refused_and_the_image_never_changes(
        service: Service, tmp_path: Path) -> None:
    s, m = service, "replay"
    s.protected_machine(m, [{"name": "data", "size": "256M"}])
    # Enough data that the transfer to the vault takes a moment to replay into.
    s.exec(m, "echo before > /mnt/data/state.txt; "
              "dd if=/dev/urandom of=/mnt/data/big bs=1M count=120 status=none; sync")
    scripts = s.guest_file(m, "etc") / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "replay.py").write_text(REPLAYER)
    post = scripts / "post.sh"
    # After the real snapshot the guest changes its disk and replays the request: a
    # second clone would put the changed data into the restore point.
    post.write_text("#!/bin/sh\necho after > /mnt/data/state.txt; sync\n"
                    f"setsid {PY} /etc/frostpoint/scripts/replay.py 25 "
                    ">/dev/null 2>&1 </dev/null &\n")
    post.chmod(0o755)
    s.script_config(m, json.dumps({"postScriptLocation": "/etc/frostpoint/scripts/post.sh",
                                   "timeoutInSeconds": 30}))
    job = s.backup(m)
    assert job["status"] == "Completed", job
    rp_id = job["details"]["restore_point"]
    image = s.data_dir / "pool" / "snapshots" / m / job["id"] / "data.img"
    at_end = sha256_file(image)

    log = s.guest_file(m, "lib") / "replay.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            log.exists() and log.read_text().endswith("done\n")):
        time.sleep(0.5)
    answers = [json.loads(line) for line in log.read_text().splitlines() if line != "done"]
    transfer = next(t for t in job["subtasks"] if t["name"] == "Transfer data to vault")
    t0, t1, ended = iso(transfer["started_at"]), iso(transfer["ended_at"]), iso(
        job["ended_at"])
    assert any(t0 <= a[0] <= t1 for a in answers), "no replay during the transfer"
    assert any(a[0] > ended for a in answers), "no replay after the job"
    # Every replay is refused with a catalog code, in every phase.
    assert all(a[1] == 409 and a[2] in ("Conflict", "ExtensionOperationFailedForManagedDisks")
               for a in answers), [a for a in answers if a[1] != 409][:5]
    assert sha256_file(image) == at_end  # the restore point's image never changed

    # The restore point holds the disk as it was at the snapshot, both copies.
    for source in ("instant", "vault"):
        out = tmp_path / source
        j = restore_job(s, "files", {"restore_point": rp_id, "path": "state.txt",
                                     "to": str(out), "source": source})
        assert j["status"] == "Completed", j
        assert (out / "state.txt").read_text() == "before\n", source
    j = restore_job(s, "disks", {"restore_point": rp_id, "to": str(tmp_path / "disks"),
                                 "source": "vault"})
    assert j["status"] == "Completed", j
    assert sha256_file(tmp_path / "disks" / "data.img") == at_end
    s.client.delete(f"/machines/{m}")


# -- restore files: the guest's filesystem is hostile (2.4) -----------------------------
def test_restore_files_skips_devices_and_fifos_and_keeps_symlinks_as_links(
        service: Service, tmp_path: Path) -> None:
    s, m = service, "trap"
    s.protected_machine(m)
    # A host block device with known bytes: a restore that opens the guest's device
    # node would copy them out.
    secret = b"host device contents 0451 " * 40000
    backing = Path(tempfile.mkstemp(dir=tmp_path, suffix=".img")[1])
    backing.write_bytes(secret)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        st = os.stat(dev)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        s.exec(m, "mkdir -p /mnt/data/trap && echo fine > /mnt/data/trap/ok.txt")
        # The guest cannot mknod (CAP_MKNOD is dropped); a guest of another kind (a VM)
        # can, so the node is made on its disk by the host, in the machine's mounts.
        s.in_mounts(m, "os.mknod('/mnt/data/trap/disk', stat.S_IFBLK | 0o600, "
                       f"os.makedev({major}, {minor}))")
        s.exec(m, "test -b /mnt/data/trap/disk && "
                  "mkfifo /mnt/data/trap/pipe && ln -s /etc /mnt/data/trap/etc-link && "
                  "ln -s ../../../../../../etc/passwd /mnt/data/trap/up && "
                  "ln -s loop-b /mnt/data/trap/loop-a && ln -s loop-a /mnt/data/trap/loop-b && "
                  "sync")
        job = s.backup(m)
        assert job["status"] == "Completed", job
        rp_id = job["details"]["restore_point"]
        out = tmp_path / "out"
        started = time.monotonic()
        j = restore_job(s, "files", {"restore_point": rp_id, "path": "trap", "to": str(out),
                                     "source": "instant"})
        assert time.monotonic() - started < 60  # no hang on the FIFO
        assert j["status"] == "Completed", j
        got = out / "trap"
        assert (got / "ok.txt").read_text() == "fine\n"
        assert sorted(p.name for p in got.iterdir()) == ["etc-link", "loop-a", "loop-b",
                                                         "ok.txt", "up"]
        assert sorted(j["details"]["skipped"]) == ["disk", "pipe"]
        # Links stay links: nothing of the host's /etc was copied into the target.
        assert (got / "etc-link").is_symlink() and os.readlink(got / "etc-link") == "/etc"
        assert (got / "up").is_symlink()
        for p in out.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert secret[:26] not in p.read_bytes()
        # A path through a guest symlink that leaves the disk is not on the disk.
        j = restore_job(s, "files", {"restore_point": rp_id, "path": "trap/etc-link/passwd",
                                     "to": str(tmp_path / "esc"), "source": "instant"})
        assert j["status"] == "Failed" and j["error"]["code"] == "NotFound", j
        assert not (tmp_path / "esc" / "passwd").exists()
        # A path through a symlink loop is not on the disk either (no internal error).
        j = restore_job(s, "files", {"restore_point": rp_id, "path": "trap/loop-a/x",
                                     "to": str(tmp_path / "loop"), "source": "instant"})
        assert j["status"] == "Failed" and j["error"]["code"] == "NotFound", j
        # The FIFO asked for by name is refused, not opened.
        j = restore_job(s, "files", {"restore_point": rp_id, "path": "trap/pipe",
                                     "to": str(tmp_path / "fifo"), "source": "instant"})
        assert j["status"] == "Failed" and j["error"]["code"] == "InvalidInput", j
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    s.client.delete(f"/machines/{m}")


# -- the wire endpoint under a guest's flood (2.5) ---------------------------------------
PROBES = GUEST_CLIENT + """
res = {}
with httpx.Client(base_url=WIRE, headers=H, timeout=70) as c:
    etag = c.get("/machine/goalstate").headers["ETag"]
    for wait in ("nan", "inf", "-1"):
        t = time.monotonic()
        r = c.get("/machine/goalstate", params={"wait": wait},
                  headers={"If-None-Match": etag})
        res["wait_" + wait] = [r.status_code, time.monotonic() - t]
    r = c.post("/machine/heartbeat", content=b'{"os": "' + b"x" * (1 << 20) + b'"}',
               headers={"Content-Type": "application/json"})
    res["big"] = [r.status_code, r.json().get("code")]
    def chunks():
        for _ in range(64):
            yield b"[" + b"1," * 4000 + b"1]"
    r = c.post("/machine/status", content=chunks(),
               headers={"Content-Type": "application/json"})
    res["chunked"] = [r.status_code, r.json().get("code")]
    for name, path, body in (
            ("bad_heartbeat", "/machine/heartbeat", {"status": {"x": 1}, "os": ["a"]}),
            ("bad_status", "/machine/status", {"extensions": [{"name": "x",
                                                                "sequence": "abc"}]}),
            ("status_not_list", "/machine/status", {"extensions": "all"})):
        r = c.post(path, json=body)
        res[name] = [r.status_code, r.json().get("code")]
# Held long polls take the machine's request slots; one whose client has gone
# gives its slot back at once.
import socket
etag = httpx.get(WIRE + "/machine/goalstate", headers=H).headers["ETag"]
poll = ("GET /machine/goalstate?wait=50 HTTP/1.1\\r\\nHost: x\\r\\n"
        f"Authorization: {H['Authorization']}\\r\\nIf-None-Match: {etag}\\r\\n\\r\\n")
held = [socket.create_connection(("10.213.0.1", 80), timeout=5) for _ in range(8)]
for sk in held:
    sk.sendall(poll.encode())
time.sleep(1)
res["while_held"] = httpx.get(WIRE + "/machine/goalstate", headers=H).status_code
for sk in held:
    sk.close()
time.sleep(1)
res["after_close"] = httpx.get(WIRE + "/machine/goalstate", headers=H).status_code
# Idle connections: one address may hold only so many.
conns, refused = [], 0
for _ in range(200):
    try:
        conns.append(socket.create_connection(("10.213.0.1", 80), timeout=5))
    except OSError:
        refused += 1
res["idle_connections"] = [len(conns), refused]
for conn in conns:
    conn.close()
print(json.dumps(res))
"""

FLOOD = GUEST_CLIENT + """
import os, threading
open("/var/lib/frostpoint-agent/flood.pid", "w").write(str(os.getpid()))
end = time.time() + float(sys.argv[1])
count = {"n": 0}
HELD = 3000
def poll():
    # Long polls that would never end (wait=nan, the current ETag), each on its own
    # connection, held open and never read.
    import socket
    etag = httpx.get(WIRE + "/machine/goalstate", headers=H).headers["ETag"]
    req = ("GET /machine/goalstate?wait=nan HTTP/1.1\\r\\nHost: x\\r\\n"
           f"Authorization: {H['Authorization']}\\r\\nIf-None-Match: {etag}\\r\\n\\r\\n").encode()
    held = []
    while time.time() < end and len(held) < HELD:
        try:
            c = socket.create_connection(("10.213.0.1", 80), timeout=5)
            c.sendall(req)
            held.append(c)
            count["n"] += 1
        except OSError:
            time.sleep(0.1)
    while time.time() < end:
        time.sleep(0.5)
def big():
    body = b"[" + b"1," * (4 << 20) + b"1]"
    with httpx.Client(base_url=WIRE, headers={**H, "Content-Type": "application/json"},
                      timeout=5) as c:
        while time.time() < end:
            for path in ("/machine/heartbeat", "/machine/status"):
                try:
                    c.post(path, content=body)
                except httpx.HTTPError:
                    pass
def junk():
    with httpx.Client(base_url=WIRE, headers=H, timeout=5) as c:
        while time.time() < end:
            try:
                c.post("/machine/status", json={"extensions": [
                    {"name": "x" * 200, "version": "1", "sequence": 1, "status": "x"}] * 16})
            except httpx.HTTPError:
                pass
threads = [threading.Thread(target=f) for f in [poll] + [big] * 6 + [junk] * 4]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_a_guest_flooding_its_endpoint_does_not_fail_another_machines_backup(
        service: Service) -> None:
    s = service
    s.protected_machine("flooder")
    s.protected_machine("victim")
    # Direct checks: every answer is bounded and carries a catalog code.
    res = guest_python(s, "flooder", PROBES)
    for wait in ("nan", "inf", "-1"):
        status, took = res[f"wait_{wait}"]
        assert status == 304 and took < 56 + 2, (wait, res)
    assert res["wait_nan"][1] < 2 and res["wait_-1"][1] < 2, res
    assert res["big"] == [413, "InvalidInput"], res
    assert res["chunked"] == [413, "InvalidInput"], res
    for name in ("bad_heartbeat", "bad_status", "status_not_list"):
        assert res[name] == [422, "InvalidInput"], (name, res)
    assert res["while_held"] == 429 and res["after_close"] == 200, res
    held, refused = res["idle_connections"]
    assert held <= 64 and refused >= 136, res

    # The flood runs in the background inside the flooder while the victim backs up.
    (s.guest_file("flooder", "etc") / "flood.py").write_text(FLOOD)
    s.exec("flooder", f"setsid {PY} /etc/frostpoint/flood.py 60 >/dev/null 2>&1 </dev/null &")
    time.sleep(15)  # until the flood has its connections open
    try:
        s.exec("victim", "echo still-here > /mnt/data/v.txt; sync")
        job = s.backup("victim", timeout=120)
        assert job["status"] == "Completed", job
        assert job["details"]["consistency"] == "FileSystemConsistent"
        assert s.client.get("/machines/victim")["agent"]["status"] == "Ready"
    finally:
        s.exec("flooder", "kill $(cat /var/lib/frostpoint-agent/flood.pid); true",
               check=False)
    for m in ("flooder", "victim"):
        s.client.delete(f"/machines/{m}")


# -- restore vm and the key vault grant (1) ----------------------------------------------
def test_restore_vm_of_an_encrypted_disk_needs_the_key_vault_grant(service: Service) -> None:
    s, c = service, service.client
    s.cli_json("keyvault", "create", "kvg")
    s.cli_json("keyvault", "key-create", "kvg", "disks")
    s.cli_json("keyvault", "grant", "kvg")
    s.protected_machine("genc", [{"name": "data", "size": "64M",
                                  "encryption_key": "kvg/disks"}])
    s.exec("genc", "echo sealed > /mnt/data/f.txt; sync")
    job = s.backup("genc")
    assert job["status"] == "Completed", job
    rp_id = job["details"]["restore_point"]

    s.cli_json("keyvault", "revoke", "kvg")
    j = restore_job(s, "vm", {"restore_point": rp_id, "name": "genc2", "source": "instant"})
    assert j["status"] == "Failed", j
    assert j["error"]["code"] == "UserErrorKeyvaultPermissionsNotConfigured"
    assert j["error"]["details"]["missing_permissions"] == ["get", "unwrapKey"]
    assert "genc2" not in [m["name"] for m in c.get("/machines")]

    s.cli_json("keyvault", "grant", "kvg")
    j = restore_job(s, "vm", {"restore_point": rp_id, "name": "genc2", "source": "instant"})
    assert j["status"] == "Completed", j
    assert s.exec("genc2", "cat /mnt/data/f.txt") == "sealed\n"
    for m in ("genc", "genc2"):
        c.delete(f"/machines/{m}")


# -- e2fsprogs on a guest's image are bounded (2.4) --------------------------------------
def test_e2fs_tools_on_a_guest_image_are_bounded_by_a_timeout(monkeypatch: Any) -> None:
    from frostpoint.service import vault_checks
    # A crafted filesystem can keep debugfs busy; a tool that never ends stands for it.
    monkeypatch.setattr(vault_checks, "E2FS_TOOL_S", 1)
    started = time.monotonic()
    assert vault_checks._e2fs(["sleep", "30"]) == ""
    assert time.monotonic() - started < 5
    assert vault_checks._e2fs(["echo", "Block size: 4096"]) == "Block size: 4096\n"
