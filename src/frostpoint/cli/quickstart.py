"""frostpoint quickstart: the main job on the embedded default, start to finish.

Starts a service if none answers, makes sandbox machine `demo` with sample files and a
small SQLite database quiesced by a pre/post script, protects it, backs it up, changes
it, backs it up again, restores a file from the first restore point and checks it
byte for byte. Running it again starts over with a fresh `demo`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from frostpoint.cli.client import ApiError, Client, console, data_dir, service_url

MACHINE, VAULT, POLICY = "demo", "demo-vault", "demo-daily"

# Runs inside the machine: sample files and a database, then the quiescing scripts.
SETUP = r"""
set -e
mkdir -p /mnt/data/docs /mnt/data/app /etc/frostpoint/scripts
for i in $(seq 1 40); do
  yes "line $i of the frostpoint sample document, some text that compresses well" \
    | head -c 200000 > /mnt/data/docs/doc$i.txt
done
head -c 8000000 /dev/urandom > /mnt/data/docs/photo.bin
python3 - <<'EOF'
import sqlite3
db = sqlite3.connect("/mnt/data/app/orders.db")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT, qty INT)")
db.executemany("INSERT INTO orders (item, qty) VALUES (?, ?)",
               [(f"item-{i}", i % 7) for i in range(5000)])
db.commit()
EOF
cat > /etc/frostpoint/scripts/pre.sh <<'EOF'
#!/bin/sh
# Quiesce the app: checkpoint the WAL into the database file, record checksums.
set -e
python3 -c "import sqlite3; sqlite3.connect('/mnt/data/app/orders.db') \
  .execute('PRAGMA wal_checkpoint(TRUNCATE)')"
cd /mnt/data && find docs app -type f ! -name '*-wal' ! -name '*-shm' | sort \
  | xargs sha256sum > /mnt/data/.checksums
sync
EOF
cat > /etc/frostpoint/scripts/post.sh <<'EOF'
#!/bin/sh
echo "post-script: application resumed"
EOF
chmod 700 /etc/frostpoint/scripts/pre.sh /etc/frostpoint/scripts/post.sh
cat > /etc/frostpoint/vmbackup.json <<'EOF'
{"preScriptLocation": "/etc/frostpoint/scripts/pre.sh",
 "postScriptLocation": "/etc/frostpoint/scripts/post.sh",
 "timeoutInSeconds": 60, "continueBackupOnFailure": false, "fsFreezeEnabled": true}
EOF
chmod 600 /etc/frostpoint/vmbackup.json
"""

CHANGE = r"""
set -e
echo "changed after the first backup" >> /mnt/data/docs/doc1.txt
head -c 2000000 /dev/urandom > /mnt/data/docs/new.bin
python3 -c "
import sqlite3
db = sqlite3.connect('/mnt/data/app/orders.db')
db.executemany('INSERT INTO orders (item, qty) VALUES (?, ?)', [('late', 1)] * 100)
db.commit()"
"""


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        console.print(msg)


def _answering() -> Client | None:
    """A client of the service at FROSTPOINT_URL, if it answers and its token is there."""
    try:
        Client().get("/health")
        if (data_dir() / "api-token").exists():
            return Client()  # made again: the token file may be new
    except ApiError:
        pass
    return None


def ensure_service(quiet: bool) -> Client:
    if (c := _answering()) is not None:
        return c
    log = data_dir() / "server.log"
    data_dir().mkdir(parents=True, exist_ok=True)
    _say(quiet, f"starting frostpoint server (data {data_dir()}, log {log})")
    listen = service_url().removeprefix("http://")
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "frostpoint.cli.main", "server",
                                 "--data-dir", str(data_dir()), "--listen", listen],
                                stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (data_dir() / "quickstart-server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (c := _answering()) is not None:
            return c
        time.sleep(0.3)
    raise ApiError({"code": "Unavailable", "message": f"the service did not start; see {log}"},
                   0)


def _exec(c: Client, script: str) -> str:
    r = c.post(f"/machines/{MACHINE}/exec", {"argv": ["sh", "-c", script]})
    if r["returncode"] != 0:
        raise ApiError({"code": "QuickstartStepFailed",
                        "message": f"command in {MACHINE} failed: {r['stderr'][-800:]}"}, 0)
    return str(r["stdout"])


def _ensure(c: Client, path: str, body: dict[str, Any], name: str) -> None:
    if not any(x["name"] == name for x in c.get(path)):
        c.post(path, body)


def run_quickstart(quiet: bool = False, kind: str = "sandbox") -> dict[str, Any]:
    t0 = time.monotonic()
    c = ensure_service(quiet)
    if any(m["name"] == MACHINE for m in c.get("/machines")):
        _say(quiet, f"removing the previous {MACHINE}")
        c.delete(f"/machines/{MACHINE}")
    what = "a QEMU VM (boots in ~20-50 s under TCG)" if kind == "qemu" else "sandbox machine"
    _say(quiet, f"creating {what} {MACHINE} with a 512 MiB data disk")
    c.post("/machines", {"name": MACHINE, "disks": [{"name": "data", "size": "512M"}],
                         "kind": kind})
    _exec(c, SETUP)
    if any(v["name"] == VAULT for v in c.get("/vaults")):  # a fresh demo vault, too
        c.delete(f"/vaults/{VAULT}")
    c.post("/vaults", {"name": VAULT})
    _ensure(c, "/policies", {"name": POLICY, "schedule_time": "23:30"}, POLICY)
    c.post("/protection/enable", {"machine": MACHINE, "vault": VAULT, "policy": POLICY})
    deadline = time.monotonic() + (180 if kind == "qemu" else 30)
    while c.get(f"/machines/{MACHINE}")["agent"]["status"] != "Ready":
        if time.monotonic() > deadline:
            raise ApiError({"code": "UserErrorGuestAgentStatusUnavailable",
                            "message": "the agent in demo did not report Ready"}, 0)
        time.sleep(0.3)
    original = _exec(c, "cat /mnt/data/docs/doc1.txt | sha256sum").split()[0]

    jobs = []
    for n in (1, 2):
        _say(quiet, f"backup {n}")
        j = c.post("/backups", {"machine": MACHINE})
        j = c.wait_job(j["id"], show=not quiet, label=f"backup {n}")
        if j["status"] not in ("Completed", "CompletedWithWarnings"):
            raise ApiError(j.get("error") or {"code": "BackUpOperationFailed",
                                              "message": j["status"]}, 0)
        jobs.append(j)
        _say(quiet, f"  {j['status']} in {j['duration_s']:.1f} s, "
                    f"{j['details'].get('consistency')}, freeze {j['details'].get('freeze_ms')}"
                    f" ms")
        if n == 1:
            _say(quiet, "changing data in the machine")
            _exec(c, CHANGE)

    rps = c.get("/restore-points", params={"machine": MACHINE})
    first = next(r for r in rps if r["job"] == jobs[0]["id"])
    target = Path(tempfile.mkdtemp(prefix="frostpoint-quickstart-"))
    _say(quiet, f"restoring docs/doc1.txt from the first restore point (vault) to {target}")
    j = c.post("/restores/files", {"restore_point": first["id"], "path": "docs/doc1.txt",
                                   "to": str(target), "source": "vault"})
    j = c.wait_job(j["id"], show=not quiet, label="restore")
    if j["status"] != "Completed":
        raise ApiError(j.get("error") or {"code": "RestoreFailed", "message": j["status"]}, 0)
    restored = hashlib.sha256((target / "doc1.txt").read_bytes()).hexdigest()
    ok = restored == original
    if not quiet:
        from frostpoint.cli.common import print_job, table
        for jj in c.get("/jobs", params={"machine": MACHINE})[:3]:
            print_job(jj)
        table(rps, ["id", "created_at", "consistency", "tier", "freeze_ms"],
              "restore points of demo")
    transfer = [jj["details"].get("transfer", {}) for jj in jobs]
    summary = (f"quickstart {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s: "
               f"2 backups ({jobs[0]['details'].get('consistency')}), "
               f"2nd stored {transfer[1].get('bytes_stored', 0) / 1e6:.1f} MB new of "
               f"{transfer[1].get('bytes_total', 0) / 1e6:.0f} MB; "
               f"doc1.txt restored from the vault "
               f"{'matches' if ok else 'DIFFERS FROM'} the original byte for byte")
    dashboard = service_url() + "/"
    _say(quiet, f"dashboard: {dashboard} (sign in with the token in "
                f"{data_dir() / 'api-token'}; docs/web.md)")
    return {"ok": ok, "summary": summary, "dashboard": dashboard, "jobs": [jj["id"] for jj in jobs],
            "restore_points": [r["id"] for r in rps], "restored_file": str(target / "doc1.txt"),
            "sha256": restored}


def run_down() -> dict[str, Any]:
    """Remove the demo machine; stop the service and release the fabric if we own it."""
    from frostpoint.fabric.teardown import teardown_host
    removed = []
    try:
        c = Client()
        if any(m["name"] == MACHINE for m in c.get("/machines")):
            c.delete(f"/machines/{MACHINE}")
            removed.append(MACHINE)
        others = [m["name"] for m in c.get("/machines")]
    except ApiError:
        others = []
    pidfile = data_dir() / "quickstart-server.pid"
    if others:  # other machines are the user's: leave the service and fabric running
        return {"ok": True, "removed_machines": removed,
                "summary": f"removed {MACHINE}; service left running for "
                           f"{', '.join(others)}"}
    stopped = pidfile.exists()
    if stopped:  # stop the service only if the quickstart started it
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        pidfile.unlink()
        teardown_host(data_dir())
    os.sync()
    what = "service stopped, fabric released" if stopped else (
        "service left running (the quickstart did not start it)")
    return {"ok": True, "removed_machines": removed,
            "summary": f"removed {', '.join(removed) or 'nothing'}; {what}"}
