"""Finding files without knowing the path: rp browse (from the vault), restore files
with globs, restore mount/unmount and the cleaning of mounts a crash left, on a guest
filesystem with hostile entries (links out, a huge name, a name that is not UTF-8, a
FIFO, a set-uid program)."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Service, needs_root

pytestmark = needs_root
M = "br"

# A stat walk of /mnt/data/docs in the guest: what `ls -la` shows, as data.
GUEST_LS = r"""
import json, os, stat
root = b"/mnt/data/docs"
kinds = [(stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
         (stat.S_ISFIFO, "fifo")]
out = []
for n in sorted(os.listdir(root)):
    st = os.lstat(os.path.join(root, n))
    out.append({"name": n.decode("utf-8", "replace"), "size": st.st_size,
                "mtime": st.st_mtime, "mode": oct(stat.S_IMODE(st.st_mode)),
                "type": next(k for f, k in kinds if f(st.st_mode))})
print(json.dumps(out))
"""
HUGE = "h" * 255  # the longest name ext4 takes


def fill(s: Service) -> None:
    s.exec(M, "mkdir -p /mnt/data/docs/sub && cd /mnt/data/docs && "
              "echo alpha > a.txt && echo beta > b.txt && echo gamma > c.md && "
              "echo deep > sub/d.txt && ln -s /etc link && ln -s / /mnt/data/escape && "
              f"echo x > {HUGE} && mkfifo pipe && touch \"$(printf 'bad\\377name')\" && "
              "printf '#!/bin/sh\\nid\\n' > suid.sh && chmod 4755 suid.sh && "
              "head -c 40000000 /dev/urandom > /mnt/data/big.bin && sync")


def as_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def readers(s: Service) -> list[int]:
    """Pids of the vault's lazy disk readers working under this service's data dir."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"frostpoint.vault.lazyfile" in argv and any(
                a.startswith(str(s.data_dir).encode()) for a in argv):
            out.append(int(p.name))
    return out


def mount_options(path: Path) -> set[str] | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[1] == str(path):
            return set(parts[3].split(","))
    return None


def test_browse_from_the_vault_matches_the_guest_and_globs_stay_on_the_disk(
        service: Service, tmp_path: Path) -> None:
    s = service
    s.protected_machine(M, [{"name": "data", "size": "64M"}])
    fill(s)
    guest: list[dict[str, Any]] = json.loads(s.exec(M, f"python3 -c '{GUEST_LS}'"))
    job = s.backup(M)
    assert job["status"] == "Completed", job
    rp = job["details"]["restore_point"]

    listing = s.cli_json("rp", "browse", rp, "--path", "docs", "--source", "vault")
    assert listing["source"] == "vault"
    # Only what the filesystem's metadata needs came from the vault, not the disk.
    assert 0 < listing["blocks_read"] <= listing["blocks_total"] // 2, listing
    print(f"browse from the vault read {listing['blocks_read']} of "
          f"{listing['blocks_total']} stored blocks")
    got = listing["entries"]
    assert [e["name"] for e in got] == [g["name"] for g in guest]
    for e, g in zip(got, guest, strict=True):
        assert (e["type"], e["size"], e["mode"]) == (g["type"], g["size"], g["mode"]), e
        assert abs(as_seconds(e["mtime"]) - g["mtime"]) < 1e-3, (e, g)
    link = next(e for e in got if e["name"] == "link")
    assert link["target"] == "/etc"  # shown, never followed
    assert any(e["name"] == "bad\ufffdname" for e in got)
    assert any(e["name"] == HUGE for e in got)
    # From the instant tier the same listing.
    instant = s.cli_json("rp", "browse", rp, "--path", "docs", "--source", "instant")
    assert instant["entries"] == got

    # Links out are not folders of the disk: nothing outside it is listed or copied.
    for path in ("docs/link", "escape", "escape/etc", "docs/link/.."):
        r = s.cli_json("rp", "browse", rp, "--path", path, check=False)
        if path == "docs/link/..":  # normalized to docs itself: still on the disk
            assert r["entries"] == instant["entries"]
            continue
        assert r["error"]["code"] == "NotFound", (path, r)
    out = tmp_path / "globbed"
    j = s.cli_json("restore", "files", rp, "--path", "docs/*.txt", "--to", str(out),
                   "--source", "vault")
    assert j["status"] == "Completed", j
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt"]
    assert (out / "a.txt").read_text() == "alpha\n"
    for pattern in ("escape/etc/*", "docs/link/*", "../*/passwd"):
        j = s.cli_json("restore", "files", rp, "--path", pattern, "--to",
                       str(tmp_path / "none"), check=False)
        assert j["status"] == "Failed" and j["error"]["code"] == "NotFound", (pattern, j)
    j = s.cli_json("restore", "files", rp, "--path", "*", "--to", str(tmp_path / "all"))
    assert os.readlink(tmp_path / "all" / "escape") == "/"  # copied as a link
    assert (tmp_path / "all" / "docs" / "sub" / "d.txt").read_text() == "deep\n"


def test_mount_is_read_only_nodev_nosuid_noexec_and_a_crash_leaves_none(
        service: Service, tmp_path: Path) -> None:
    s = service
    rp = next(r["id"] for r in s.client.get("/restore-points", params={"machine": M}))
    at = tmp_path / "mnt"
    m = s.cli_json("restore", "mount", rp, "--to", str(at), "--source", "vault")
    assert m["path"] == str(at) and m["restore_point"] == rp
    opts = mount_options(at)
    assert opts is not None and {"ro", "nosuid", "nodev", "noexec"} <= opts, opts
    assert (at / "docs" / "a.txt").read_text() == "alpha\n"
    assert os.readlink(at / "docs" / "link") == "/etc"
    # What the mount shows is what browse (and so the guest) showed.
    listed = s.cli_json("rp", "browse", rp, "--path", "docs", "--source", "instant")
    seen = sorted(os.listdir(os.fsencode(at / "docs")))
    assert [n.decode("utf-8", "replace") for n in seen] == [
        e["name"] for e in listed["entries"]]
    for e in listed["entries"]:
        if e["name"].isascii():
            st = os.lstat(at / "docs" / e["name"])
            assert (st.st_size, oct(st.st_mode & 0o7777)) == (e["size"], e["mode"]), e
    assert not os.access(at / "docs" / "suid.sh", os.X_OK)  # noexec
    assert [x["path"] for x in s.cli_json("restore", "mounts")] == [str(at)]
    again = s.cli_json("restore", "mount", rp, "--to", str(at), check=False)
    assert again["error"]["code"] == "Conflict"
    u = s.cli_json("restore", "unmount", str(at))
    assert u["unmounted"] is True
    assert mount_options(at) is None and not at.exists()
    assert s.cli_json("restore", "mounts") == []

    # A mount the service leaves by dying is gone when it starts again.
    at2 = tmp_path / "mnt2"
    s.cli_json("restore", "mount", rp, "--to", str(at2), "--source", "vault")
    assert mount_options(at2) is not None
    assert readers(s)  # the vault's disk is read on demand while mounted
    s.stop(signal.SIGKILL)
    assert mount_options(at2) is not None  # the kernel keeps it, the reader serves it
    assert (at2 / "docs" / "b.txt").read_text() == "beta\n"
    s.start()
    assert mount_options(at2) is None
    assert s.cli_json("restore", "mounts") == []
    deadline = time.monotonic() + 10
    while readers(s) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert readers(s) == []
    leftovers = [p for p in (s.data_dir / "pool").rglob("mount-*")] if (
        s.data_dir / "pool").exists() else []
    assert leftovers == [], leftovers
