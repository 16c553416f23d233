"""Back up a running machine twice while an app writes, restore both restore points from
the vault and from the pool, and compare with checksums the quiesced app took."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import Service, needs_root, sha256_file

pytestmark = needs_root
M = "rt"

# The app: appends numbered lines without pause. The pre-script stops it (SIGSTOP) and
# records every file's checksum; the post-script lets it go on. So the checksums are
# exactly what a consistent snapshot must hold.
APP = r"""
mkdir -p /mnt/data/app /mnt/logs/app /etc/frostpoint/scripts
cat > /etc/frostpoint/scripts/writer.py <<'EOF'
import os, time
fd = os.open("/mnt/data/app/journal.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
fd2 = os.open("/mnt/logs/app/audit.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
n = 0
while True:
    n += 1
    os.write(fd, f"entry {n} {time.time():.6f}\n".encode())
    os.write(fd2, f"audit {n}\n".encode())
    time.sleep(0.002)
EOF
cat > /etc/frostpoint/scripts/pre.sh <<'EOF'
#!/bin/sh
set -e
kill -STOP $(cat /etc/frostpoint/scripts/writer.pid)
find /mnt/data /mnt/logs -path '*/lost+found' -prune -o -type f -print | sort \
  | xargs sha256sum > /etc/frostpoint/scripts/checksums.txt
EOF
cat > /etc/frostpoint/scripts/post.sh <<'EOF'
#!/bin/sh
kill -CONT $(cat /etc/frostpoint/scripts/writer.pid)
EOF
chmod 700 /etc/frostpoint/scripts/pre.sh /etc/frostpoint/scripts/post.sh
cat > /etc/frostpoint/vmbackup.json <<'EOF'
{"preScriptLocation": "/etc/frostpoint/scripts/pre.sh",
 "postScriptLocation": "/etc/frostpoint/scripts/post.sh", "timeoutInSeconds": 30}
EOF
chmod 600 /etc/frostpoint/vmbackup.json
head -c 6000000 /dev/urandom > /mnt/data/random.bin
seq 1 300000 > /mnt/logs/numbers.txt
setsid python3 /etc/frostpoint/scripts/writer.py </dev/null >/dev/null 2>&1 &
echo $! > /etc/frostpoint/scripts/writer.pid
"""


def checksums_of_image(image: Path, fs: str, prefix: str) -> dict[str, str]:
    """Mount a restored disk image read-only and checksum its files."""
    mnt = Path(tempfile.mkdtemp(prefix="fp-verify-"))
    opts = "ro,noload" if fs == "ext4" else "ro,norecovery,nouuid"
    subprocess.run(["mount", "-o", f"loop,{opts}", str(image), str(mnt)], check=True)
    try:
        out = {}
        for p in sorted(mnt.rglob("*")):
            if p.is_file() and "lost+found" not in p.parts:
                out[f"{prefix}/{p.relative_to(mnt)}"] = sha256_file(p)
        return out
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


def recorded(service: Service) -> dict[str, str]:
    text = (service.guest_file(M, "etc") / "scripts" / "checksums.txt").read_text()
    return {line.split()[1]: line.split()[0] for line in text.splitlines()}


@pytest.fixture(scope="module")
def app_machine(service: Service) -> str:
    """The machine with the app running, made once for the tests that need it."""
    service.protected_machine(M, [{"name": "data", "size": "128M", "filesystem": "ext4"},
                                  {"name": "logs", "size": "320M", "filesystem": "xfs"}])
    service.exec(M, APP)
    return M


@pytest.fixture(scope="module")
def restore_point(service: Service, app_machine: str) -> str:
    """A restore point of the app machine: the newest one, or one made now, so each
    test that restores runs alone too (pytest -k)."""
    rps = service.client.get("/restore-points", params={"machine": app_machine})
    if rps:
        return str(rps[0]["id"])
    job = service.backup(app_machine)
    assert job["status"] == "Completed", job
    return str(job["details"]["restore_point"])


def test_backup_twice_and_restore_from_vault_and_pool(service: Service, app_machine: str,
                                                      tmp_path: Path) -> None:
    points = []
    for round_ in (1, 2):
        job = service.backup(M)
        assert job["status"] == "Completed", job
        assert job["details"]["consistency"] == "ApplicationConsistent"
        assert [t["status"] for t in job["subtasks"]] == ["Completed", "Completed"]
        assert job["details"]["freeze_ms"] < 2000
        points.append((job["details"]["restore_point"], recorded(service)))
        if round_ == 1:
            service.exec(M, "head -c 3000000 /dev/urandom >> /mnt/data/random.bin; "
                            "seq 1 1000 >> /mnt/logs/numbers.txt")

    assert points[0][1] != points[1][1], "the app wrote between the backups"
    rps = {r["id"]: r for r in service.client.get("/restore-points", params={"machine": M})}
    for rp_id, sums in points:
        assert rps[rp_id]["tier"] == "Snapshot and Vault"
        images = {}
        for source in ("vault", "instant"):
            out = tmp_path / f"{rp_id}-{source}"
            j = service.cli_json("restore", "disks", rp_id, "--to", str(out),
                                 "--source", source)
            assert j["status"] == "Completed", j
            got = {**checksums_of_image(out / "data.img", "ext4", "/mnt/data"),
                   **checksums_of_image(out / "logs.img", "xfs", "/mnt/logs")}
            assert got == sums, f"{source} restore of {rp_id} differs from the app's checksums"
            images[source] = {d: sha256_file(out / f"{d}.img") for d in ("data", "logs")}
        assert images["vault"] == images["instant"], "vault and pool copies differ"


def test_restore_files_and_new_machine(service: Service, restore_point: str,
                                       tmp_path: Path) -> None:
    rp = {"id": restore_point}
    j = service.cli_json("restore", "files", rp["id"], "--path", "random.bin",
                         "--to", str(tmp_path / "files"), "--disk", "data")
    assert j["status"] == "Completed", j
    restored = sha256_file(tmp_path / "files" / "random.bin")
    text = (service.guest_file(M, "etc") / "scripts" / "checksums.txt")
    assert text.exists()
    # A new machine from the first restore point boots with the first backup's data.
    j = service.cli_json("restore", "vm", rp["id"], "--name", "rt-copy", "--source", "vault")
    assert j["status"] == "Completed", j
    out = service.exec("rt-copy", "sha256sum /mnt/data/random.bin")
    assert out.split()[0] == restored
    service.client.delete("/machines/rt-copy")


def test_missing_path_in_restore_files_is_a_clear_error(service: Service, restore_point: str,
                                                        tmp_path: Path) -> None:
    p = service.cli("restore", "files", restore_point, "--path", "no/such/file", "--to",
                    str(tmp_path), "--json", check=False)
    assert p.returncode == 1
    assert '"NotFound"' in p.stdout
