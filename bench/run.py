"""Frostpoint benchmark: full, incremental and restore against borg and restic.

    make bench                      # or, as root:  .venv/bin/python bench/run.py [--strict]

Builds a reproducible dataset inside a sandbox machine (2 GiB ext4 disk, ~430 MB used),
backs it up with Frostpoint (full), changes ~1 %, backs it up again (incremental),
restores it from the vault; then runs borg (zstd,3, repokey) and restic on the very
snapshot images Frostpoint transferred. Prints a table and, last, three ratio lines.
Results as JSON in bench/results/. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import frostpoint
from frostpoint import __version__ as FROSTPOINT_VERSION  # noqa: N812
from frostpoint.vault.format import BLOCK_SIZE

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from cpu import Contention, wait_quiet  # noqa: E402
from service import MemoryProbe, Service  # noqa: E402

from tools import ensure_installed, timed  # noqa: E402

MACHINE, DISK, DISK_SIZE = "bench", "data", "2G"
VAULT, POLICY = "bench-vault", "bench-policy"
PASSWORD = "frostpoint-bench"  # borg and restic repositories: throwaway
TARGETS = {"full_vs_borg": 0.5, "incremental_vs_borg": 0.15, "restore_vs_restic": 1.0,
           "transfer_peak_rss_mb": 300.0, "incremental_read_vs_changed": 3.0}
MB = 1_000_000
err = Console(stderr=True, highlight=False)
T0 = time.monotonic()


def say(msg: str) -> None:
    err.print(f"[dim]{time.monotonic() - T0:7.1f}s[/] {msg}")


# -- helpers -----------------------------------------------------------------------
QUIET_WAIT = 120.0  # --quiet-wait
VAULT_BLOCK = BLOCK_SIZE  # --block-size: the benchmark vault's block size


def prepare_step() -> dict[str, Any]:
    """Before every timed step, all tools alike: sync, wait (bounded) until the other
    processes on the machine leave the CPUs alone, then drop the page cache
    (echo 3 > /proc/sys/vm/drop_caches)."""
    os.sync()
    quiet = wait_quiet(QUIET_WAIT) if QUIET_WAIT > 0 else {"waited_s": 0, "quiet": None}
    if not quiet.get("quiet", True):
        say(f"[yellow]  machine still busy ({quiet['busy_frac']:.0%} CPU) after "
            f"{quiet['waited_s']:.0f} s; measuring anyway[/]")
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        quiet["cache_dropped"] = True
    except OSError as e:
        say(f"[yellow]cannot drop the page cache ({e}); timings are warm-cache[/]")
        quiet["cache_dropped"] = False
    return quiet


def busy_note(step: dict[str, Any]) -> str:
    f = step["other_cpu_frac"]
    return f" [yellow](other processes took {f:.0%} of the CPUs)[/]" if f >= 0.1 else ""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def du(path: Path) -> int:
    """Bytes allocated on disk under path."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def allocated(path: Path) -> int:
    """Bytes of a sparse file that hold data (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, total = os.fstat(fd).st_size, 0, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            total += end - start
            pos = end
        return total
    finally:
        os.close(fd)


def image_diff(a: Path, b: Path, block: int = BLOCK_SIZE, page: int = 4096) -> dict[str, Any]:
    """What really changed between two snapshots of the disk: 4 KiB pages that differ
    (files, metadata and journal), and the vault blocks holding them, i.e. what a perfect
    changed-block tracker has to read. `read_floor_bytes` gives that least read for
    other block sizes too, to show what the vault's block size costs."""
    pages: list[int] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        base = 0
        while True:
            x, y = fa.read(block), fb.read(block)
            if not x and not y:
                break
            if x != y:
                for off in range(0, max(len(x), len(y)), page):
                    if x[off:off + page] != y[off:off + page]:
                        pages.append(base + off)
            base += block
    floors = {(f"{g >> 20}MiB" if g >= 1 << 20 else f"{g >> 10}KiB"):
              len({p // g for p in pages}) * g
              for g in sorted({64 << 10, 256 << 10, 1 << 20, 4 << 20, block})}
    blocks = len({p // block for p in pages})
    return {"changed_bytes": len(pages) * page, "changed_pages": len(pages),
            "changed_vault_blocks": blocks, "changed_vault_block_bytes": blocks * block,
            "read_floor_bytes": floors}


def when(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


def subtask_s(job: dict[str, Any], name: str) -> float | None:
    t = next((t for t in job["subtasks"] if t["name"] == name), None)
    if not t or not t["started_at"] or not t["ended_at"]:
        return None
    return (when(t["ended_at"]) - when(t["started_at"])).total_seconds()  # type: ignore[operator]


def machine_info(work: Path) -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) * 1024 for ln in
               Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(work)],
                        capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_bytes": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "os": Path("/etc/os-release").read_text().split("PRETTY_NAME=")[1]
            .splitlines()[0].strip('"') if Path("/etc/os-release").exists() else "?",
            "work_dir": str(work), "work_fs": fs}


# -- the Frostpoint part -----------------------------------------------------------
def fp_backup(svc: Service, label: str) -> dict[str, Any]:
    prep = prepare_step()
    say(f"frostpoint: {label} backup")
    with Contention(svc.pid) as cpu, MemoryProbe(svc.pid) as mem:
        job = svc.client.post("/backups", {"machine": MACHINE})
        job = svc.wait_job(job["id"])
    d = job.get("details") or {}
    if job["status"] != "Completed" or "transfer" not in d:
        raise RuntimeError(f"{label} backup ended {job['status']}: "
                           f"{json.dumps(job.get('error') or job.get('warnings'))[:2000]}")
    tr = d["transfer"]
    snap = svc.data_dir / "pool" / "snapshots" / MACHINE / job["id"] / f"{DISK}.img"
    if not snap.exists():
        snap = Path(d.get("snapshot", {}).get("dir", "")) / f"{DISK}.img"
    out = {"job_id": job["id"], "restore_point": d["restore_point"], "snapshot": str(snap),
           "job_s": job["duration_s"], "transfer_s": tr["duration_s"],
           "transfer_subtask_s": subtask_s(job, "Transfer data to vault"),
           "snapshot_subtask_s": subtask_s(job, "Take Snapshot"),
           "freeze_ms": d.get("freeze_ms"), "consistency": d.get("consistency"),
           "transfer": tr, "memory": mem.summary(), "prepare": prep, **cpu.result()}
    say(f"  job {out['job_s']:.1f} s, transfer {tr['duration_s']:.1f} s, "
        f"read {tr['bytes_read'] / MB:.0f} MB, peak RSS {mem.peak / MB:.0f} MB, "
        f"{out['cpu_s']:.1f} CPU-s{busy_note(out)}")
    return out


def fp_restore(svc: Service, rp: str, to: Path) -> dict[str, Any]:
    prep = prepare_step()
    say("frostpoint: restore disks from the vault")
    with Contention(svc.pid) as cpu, MemoryProbe(svc.pid) as mem:
        t0 = time.monotonic()
        job = svc.client.post("/restores/disks", {"restore_point": rp, "to": str(to),
                                                  "source": "vault"})
        job = svc.wait_job(job["id"])
        wall = time.monotonic() - t0
    if job["status"] != "Completed":
        raise RuntimeError(f"restore ended {job['status']}: {json.dumps(job.get('error'))}")
    out = {"job_id": job["id"], "job_s": job["duration_s"],
           "restore_subtask_s": subtask_s(job, "Restore"), "client_wall_s": wall,
           "image": str(to / f"{DISK}.img"), "memory": mem.summary(), "prepare": prep,
           **cpu.result()}
    say(f"  job {out['job_s']:.1f} s, peak RSS {mem.peak / MB:.0f} MB, "
        f"{out['cpu_s']:.1f} CPU-s{busy_note(out)}")
    return out


# -- borg and restic ----------------------------------------------------------------
def run_borg(work: Path, first: Path, second: Path) -> dict[str, Any]:
    repo = work / "borg-repo"
    env = {**os.environ, "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "borg-home"),
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    logs = work / "logs"
    timed(["borg", "init", "--encryption=repokey", str(repo)], env, logs / "borg-init")
    out: dict[str, Any] = {}
    for label, name, img in (("full", "full", first), ("incremental", "incr", second)):
        prep = prepare_step()
        say(f"borg: create {label}")
        with Contention() as cpu:
            t = timed(["borg", "create", "--json", "--compression", "zstd,3",
                       f"{repo}::{name}", str(img)], env, logs / f"borg-{name}")
        stats = json.loads(t.stdout).get("archive", {}).get("stats", {})
        out[label] = {"s": t.seconds, "max_rss": t.max_rss, "stats": stats, "prepare": prep,
                      **cpu.result(t.cpu_s)}
        say(f"  {t.seconds:.1f} s, {t.cpu_s:.1f} CPU-s{busy_note(out[label])}")
    out["repo_bytes"] = du(repo)
    return out


def run_restic(work: Path, first: Path, second: Path) -> dict[str, Any]:
    repo = work / "restic-repo"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo),
           "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    logs = work / "logs"
    timed(["restic", "init"], env, logs / "restic-init")
    cfg = subprocess.run(["restic", "cat", "config"], env=env, capture_output=True, text=True)
    out: dict[str, Any] = {"repo_version": json.loads(cfg.stdout).get("version")
                           if cfg.returncode == 0 else None}
    for label, img in (("full", first), ("incremental", second)):
        prep = prepare_step()
        say(f"restic: backup {label}")
        with Contention() as cpu:
            t = timed(["restic", "backup", "--json", str(img)], env, logs / f"restic-{label}")
        summary = next((json.loads(ln) for ln in reversed(t.stdout.splitlines())
                        if '"message_type":"summary"' in ln), {})
        out[label] = {"s": t.seconds, "max_rss": t.max_rss, "summary": summary,
                      "prepare": prep, **cpu.result(t.cpu_s)}
        say(f"  {t.seconds:.1f} s, {t.cpu_s:.1f} CPU-s{busy_note(out[label])}")
    target = work / "restore-restic"
    prep = prepare_step()
    say("restic: restore latest")
    with Contention() as cpu:
        t = timed(["restic", "restore", "latest", "--target", str(target)], env,
                  logs / "restic-restore")
        t1 = time.monotonic()
        os.sync()  # Frostpoint's restore fsyncs the image before the job ends; so do we
        sync_s = time.monotonic() - t1
    out["restore"] = {"s": t.seconds + sync_s, "command_s": t.seconds, "sync_s": sync_s,
                      "max_rss": t.max_rss, "image": str(target / str(second).lstrip("/")),
                      "prepare": prep, **cpu.result(t.cpu_s)}
    say(f"  {t.seconds:.1f} s + sync {sync_s:.1f} s, {t.cpu_s:.1f} CPU-s"
        f"{busy_note(out['restore'])}")
    out["repo_bytes"] = du(repo)
    return out


def cleanup(svc: Service, work: Path) -> None:
    """Machine, service, namespaces, loop devices, pool mount, temp dirs; signals are
    ignored meanwhile so that a second Ctrl-C cannot leave half of it behind."""
    say("cleaning up (machine, service, namespaces, loop devices, pool, temp dirs)")
    old = {sig: signal.signal(sig, signal.SIG_IGN)
           for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        svc.teardown()
        shutil.rmtree(work, ignore_errors=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    say("  cleaned up")


# -- one run ----------------------------------------------------------------------
def one_run(work_root: Path, n: int) -> dict[str, Any]:
    """Service, machine, dataset, the three Frostpoint steps, borg, restic; cleans up
    everything it made before returning or raising."""
    work = Path(tempfile.mkdtemp(prefix="fp-bench-", dir=work_root))
    (work / "logs").mkdir()
    data_dir = work / "fp"
    data_dir.mkdir()
    svc = Service(data_dir)
    try:
        say(f"[bold]run {n}[/]: work dir {work}; starting frostpoint server")
        svc.start()
        c = svc.client
        c.post("/vaults", {"name": VAULT, "block_size": str(VAULT_BLOCK)})
        c.post("/policies", {"name": POLICY})
        say(f"creating machine {MACHINE} with a {DISK_SIZE} ext4 disk")
        c.post("/machines", {"name": MACHINE, "disks": [{"name": DISK, "size": DISK_SIZE,
                                                         "filesystem": "ext4"}]})
        svc.wait_agent_ready(MACHINE)
        c.post("/protection/enable", {"machine": MACHINE, "vault": VAULT, "policy": POLICY})
        svc.wait_agent_ready(MACHINE)

        say("generating the dataset inside the machine (seeded)")
        # The guest has its own root: the generator goes in as the program text.
        gen = ["python3", "-c", (BENCH / "dataset.py").read_text()]
        dataset = json.loads(svc.exec(MACHINE, [*gen, "generate", f"/mnt/{DISK}"]))
        say(f"  {dataset['files']} files, {dataset['bytes_written'] / MB:.0f} MB; "
            f"filesystem uses {dataset['fs_used_bytes'] / MB:.0f} MB")

        full = fp_backup(svc, "full")
        say("changing ~1 % of the disk inside the machine (seeded)")
        change = json.loads(svc.exec(MACHINE, [*gen, "change", f"/mnt/{DISK}"]))
        say(f"  {change['bytes_written'] / MB:.1f} MB written")
        incr = fp_backup(svc, "incremental")
        first, second = Path(full["snapshot"]), Path(incr["snapshot"])

        say("comparing the two snapshot images (not timed)")
        change.update(image_diff(first, second, VAULT_BLOCK))
        change["snapshot_allocated_bytes"] = allocated(second)
        say(f"  {change['changed_bytes'] / MB:.1f} MB differ, in "
            f"{change['changed_vault_blocks']} vault blocks")

        restore = fp_restore(svc, incr["restore_point"], work / "restore-fp")
        vault_bytes = du(data_dir / "vaults" / VAULT)
        borg = run_borg(work, first, second)
        restic = run_restic(work, first, second)

        say("verifying the restored images against the snapshot (not timed)")
        want = sha256(second)
        verified = {"frostpoint": sha256(Path(restore["image"])) == want,
                    "restic": sha256(Path(restic["restore"]["image"])) == want}
        if not all(verified.values()):
            say(f"[red]a restored image differs from the snapshot: {verified}[/]")
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt | SystemExit):
            say(f"[red]run {n} interrupted[/]")
        else:
            say(f"[red]run {n} failed: {type(e).__name__}: {e}[/]")
            tail = svc.log_tail()
            if tail:
                err.print("server log (tail):\n" + tail[-2000:], markup=False)
        cleanup(svc, work)
        raise
    cleanup(svc, work)

    ratios = {
        "full_vs_borg": ratio(full["transfer_s"], borg["full"]["s"]),
        "incremental_vs_borg": ratio(incr["transfer_s"], borg["incremental"]["s"]),
        "restore_vs_restic": ratio(restore["job_s"], restic["restore"]["s"]),
    }
    checks = {**ratios,
              "transfer_peak_rss_mb": max(full["memory"]["peak_rss"],
                                          incr["memory"]["peak_rss"]) / MB,
              "incremental_read_vs_changed": ratio(incr["transfer"]["bytes_read"],
                                                   change["changed_bytes"])}
    return {"dataset": dataset, "change": change,
            "frostpoint": {"full": full, "incremental": incr, "restore": restore},
            "borg": borg, "restic": restic, "ratios": ratios, "checks": checks,
            "storage": {"frostpoint_vault_bytes": vault_bytes,
                        "borg_repo_bytes": borg["repo_bytes"],
                        "restic_repo_bytes": restic["repo_bytes"]},
            "verified": verified, **step_conditions(
                {"frostpoint full": full, "frostpoint incremental": incr,
                 "frostpoint restore": restore, "borg full": borg["full"],
                 "borg incremental": borg["incremental"], "restic full": restic["full"],
                 "restic incremental": restic["incremental"],
                 "restic restore": restic["restore"]})}


def step_conditions(steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Were the timed steps measured alike and undisturbed?"""
    busiest = max(steps, key=lambda k: steps[k]["other_cpu_frac"])
    return {"cache_dropped": all(st["prepare"]["cache_dropped"] for st in steps.values()),
            "quiet_wait_s": round(sum(st["prepare"]["waited_s"] for st in steps.values()), 1),
            "max_other_cpu_frac": steps[busiest]["other_cpu_frac"],
            "busiest_step": busiest}


# -- summary and report -------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


# The figures of the table: name -> where it is in one run's results.
FIGURES = {
    "fp_full_transfer_s": ("frostpoint", "full", "transfer_s"),
    "fp_full_job_s": ("frostpoint", "full", "job_s"),
    "fp_full_bytes_read": ("frostpoint", "full", "transfer", "bytes_read"),
    "fp_incr_transfer_s": ("frostpoint", "incremental", "transfer_s"),
    "fp_incr_job_s": ("frostpoint", "incremental", "job_s"),
    "fp_incr_bytes_read": ("frostpoint", "incremental", "transfer", "bytes_read"),
    "fp_restore_subtask_s": ("frostpoint", "restore", "restore_subtask_s"),
    "fp_restore_job_s": ("frostpoint", "restore", "job_s"),
    "borg_full_s": ("borg", "full", "s"),
    "borg_incr_s": ("borg", "incremental", "s"),
    "restic_full_s": ("restic", "full", "s"),
    "restic_incr_s": ("restic", "incremental", "s"),
    "restic_restore_s": ("restic", "restore", "s"),
    "fp_full_cpu_s": ("frostpoint", "full", "cpu_s"),
    "fp_incr_cpu_s": ("frostpoint", "incremental", "cpu_s"),
    "fp_restore_cpu_s": ("frostpoint", "restore", "cpu_s"),
    "borg_full_cpu_s": ("borg", "full", "cpu_s"),
    "borg_incr_cpu_s": ("borg", "incremental", "cpu_s"),
    "restic_full_cpu_s": ("restic", "full", "cpu_s"),
    "restic_incr_cpu_s": ("restic", "incremental", "cpu_s"),
    "restic_restore_cpu_s": ("restic", "restore", "cpu_s"),
    "max_other_cpu_frac": ("max_other_cpu_frac",),
    "changed_bytes": ("change", "changed_bytes"),
    "change_written_bytes": ("change", "bytes_written"),
    "changed_vault_blocks": ("change", "changed_vault_blocks"),
    "fs_used_bytes": ("dataset", "fs_used_bytes"),
    "vault_bytes": ("storage", "frostpoint_vault_bytes"),
    "borg_repo_bytes": ("storage", "borg_repo_bytes"),
    "restic_repo_bytes": ("storage", "restic_repo_bytes"),
    **{k: ("checks", k) for k in TARGETS},
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over runs of each figure (of the ratios themselves, not ratio of medians),
    with min and max."""
    out: dict[str, Any] = {}
    for name, path in FIGURES.items():
        values = []
        for r in runs:
            v: Any = r
            for k in path:
                v = v[k]
            values.append(v)
        out[name] = {"median": statistics.median(values), "min": min(values),
                     "max": max(values)}
    return out


def report(res: dict[str, Any], out: Console) -> None:
    m = {k: v["median"] for k, v in res["summary"].items()}
    n = len(res["runs"])

    def s(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    def spread(key: str) -> str:
        v = res["summary"][key]
        return f" ({v['min']:.3f}–{v['max']:.3f})" if n > 1 else ""

    what = f"median of {n} runs" if n > 1 else "1 run"
    t = Table(title=f"Frostpoint {FROSTPOINT_VERSION} vs {res['tools']['borg']} / restic "
              f"{res['tools']['restic'].split()[1]} — 2 GiB ext4 disk, "
              f"{m['fs_used_bytes'] / MB:.0f} MB used, {res['machine']['cpus']} CPUs, {what}")
    for col in ("step", "frostpoint transfer s", "frostpoint job s", "borg s", "restic s",
                "bytes read", "ratio"):
        t.add_column(col, justify="left" if col == "step" else "right")
    t.add_row("full backup", s(m["fp_full_transfer_s"]), s(m["fp_full_job_s"]),
              s(m["borg_full_s"]), s(m["restic_full_s"]),
              f"{m['fp_full_bytes_read'] / MB:.1f} MB",
              f"{m['full_vs_borg']:.3f} vs borg{spread('full_vs_borg')}")
    t.add_row("incremental backup", s(m["fp_incr_transfer_s"]), s(m["fp_incr_job_s"]),
              s(m["borg_incr_s"]), s(m["restic_incr_s"]),
              f"{m['fp_incr_bytes_read'] / MB:.1f} MB",
              f"{m['incremental_vs_borg']:.3f} vs borg{spread('incremental_vs_borg')}")
    t.add_row("restore (from vault)", s(m["fp_restore_subtask_s"]), s(m["fp_restore_job_s"]),
              "—", s(m["restic_restore_s"]), "—",
              f"{m['restore_vs_restic']:.3f} vs restic{spread('restore_vs_restic')}")
    out.print(t)

    tc = Table(title="CPU seconds (user + system) of each step: what contention cannot inflate")
    for col in ("step", "frostpoint", "borg", "restic"):
        tc.add_column(col, justify="left" if col == "step" else "right")
    tc.add_row("full backup", s(m["fp_full_cpu_s"]), s(m["borg_full_cpu_s"]),
               s(m["restic_full_cpu_s"]))
    tc.add_row("incremental backup", s(m["fp_incr_cpu_s"]), s(m["borg_incr_cpu_s"]),
               s(m["restic_incr_cpu_s"]))
    tc.add_row("restore", s(m["fp_restore_cpu_s"]), "—", s(m["restic_restore_cpu_s"]))
    out.print(tc)

    t2 = Table(title="targets (issue)")
    for col in ("what", "measured", "target", "met"):
        t2.add_column(col, justify="left" if col == "what" else "right")
    for key, name, unit in (
            ("full_vs_borg", "full: frostpoint transfer / borg create", ""),
            ("incremental_vs_borg", "incremental: frostpoint transfer / borg create", ""),
            ("restore_vs_restic", "restore: frostpoint restore job / restic restore", ""),
            ("transfer_peak_rss_mb", "peak RSS of the service during a transfer", " MB"),
            ("incremental_read_vs_changed", "incremental: bytes read / bytes changed", "x")):
        ok = res["targets_met"][key]
        t2.add_row(name, f"{m[key]:.3f}{unit}", f"<= {TARGETS[key]}{unit}",
                   "[green]yes[/]" if ok else "[red]no[/]")
    out.print(t2)
    out.print(
        f"change: {m['change_written_bytes'] / MB:.1f} MB written by the change script; "
        f"{m['changed_bytes'] / MB:.1f} MB of 4 KiB pages differ between the snapshots, in "
        f"{m['changed_vault_blocks']} of the vault's {VAULT_BLOCK >> 10} KiB blocks "
        f"({m['changed_vault_blocks'] * VAULT_BLOCK / MB:.0f} MB: the least a block-level "
        f"incremental can read); frostpoint read {m['fp_incr_bytes_read'] / MB:.1f} MB")
    floors = res["runs"][0]["change"]["read_floor_bytes"]
    out.print("least read for a block-level incremental by block size (run 1): " + ", ".join(
        f"{k} {v / MB:.0f} MB ({v / res['runs'][0]['change']['changed_bytes']:.1f}x)"
        for k, v in floors.items()))
    out.print(f"stored: frostpoint vault {m['vault_bytes'] / MB:.0f} MB, "
              f"borg {m['borg_repo_bytes'] / MB:.0f} MB, "
              f"restic {m['restic_repo_bytes'] / MB:.0f} MB; restored images identical to "
              f"the snapshot: {'yes' if res['verified'] else 'NO'}")
    busy = res["max_other_cpu_frac"]
    out.print(f"contention: other processes took at most {busy:.0%} of the CPUs during a "
              f"timed step" + (" [yellow]— a shared machine: wall times are noisy, compare "
                               "CPU seconds[/]" if busy >= 0.1 else ""))


def source_fingerprint() -> dict[str, Any]:
    """Which Frostpoint code was measured (no git needed): a digest of the package's
    sources and the newest modification time among them."""
    root = Path(frostpoint.__file__).resolve().parent
    h = hashlib.sha256()
    newest = 0.0
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
        newest = max(newest, p.stat().st_mtime)
    return {"path": str(root), "sha256": h.hexdigest()[:16],
            "newest_mtime": datetime.fromtimestamp(newest, UTC).isoformat(timespec="seconds")}


# -- main -------------------------------------------------------------------------
def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    global QUIET_WAIT, VAULT_BLOCK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "1")),
                    help="repeat the whole benchmark, each on fresh state, and report "
                         "medians (default 1, or $BENCH_RUNS)")
    ap.add_argument("--quiet-wait", type=float, default=QUIET_WAIT,
                    help="before each timed step wait up to this many seconds for other "
                         "processes to leave the CPUs alone (0: do not wait)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--work-dir", default=os.environ.get("FROSTPOINT_BENCH_DIR", "/var/tmp"),
                    help="where the temporary data dir and repositories go (a disk, not "
                         "tmpfs; default /var/tmp or $FROSTPOINT_BENCH_DIR)")
    ap.add_argument("--block-size", type=int,
                    default=int(os.environ.get("BENCH_BLOCK_SIZE", BLOCK_SIZE)),
                    help=f"the vault's block size in bytes (default {BLOCK_SIZE}, the "
                         "product's default, or $BENCH_BLOCK_SIZE)")
    args = ap.parse_args()
    QUIET_WAIT, VAULT_BLOCK = args.quiet_wait, args.block_size
    if os.geteuid() != 0:
        print("bench/run.py needs root (sandbox machines, loop devices, drop_caches)",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    for tool in ("mkfs.xfs", "mkfs.ext4", "ip", "losetup", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run `make setup`", file=sys.stderr)
            return 2
    tools = ensure_installed()
    say(f"tools: {tools['borg']}, {tools['restic']}")
    work_root = Path(args.work_dir)
    work_root.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    source = source_fingerprint()

    runs = [one_run(work_root, n + 1) for n in range(max(1, args.runs))]
    summary = summarize(runs)
    med = {k: v["median"] for k, v in summary.items()}
    results = {
        "started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "frostpoint_version": FROSTPOINT_VERSION, "source": source, "tools": tools,
        "machine": machine_info(work_root), "targets": TARGETS,
        "vault_block_size": VAULT_BLOCK,
        "targets_met": {k: med[k] <= TARGETS[k] for k in TARGETS},
        "ratios": {k: med[k] for k in ("full_vs_borg", "incremental_vs_borg",
                                        "restore_vs_restic")},
        "verified": all(all(r["verified"].values()) for r in runs),
        "cache_dropped_before_each_step": all(r["cache_dropped"] for r in runs),
        "max_other_cpu_frac": max(r["max_other_cpu_frac"] for r in runs),
        "summary": summary, "runs": runs,
    }

    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=2, default=str) + "\n"
    (results_dir / f"{stamp}.json").write_text(text)
    (results_dir / "latest.json").write_text(text)

    out = Console(width=max(Console().width, 130), highlight=False)
    out.print(f"results: {results_dir / 'latest.json'} (and {stamp}.json); "
              f"frostpoint source {source['sha256']} (newest file {source['newest_mtime']})")
    report(results, out)
    sys.stdout.flush()
    ratios = results["ratios"]
    # The last three lines, exactly.
    print(f"ratio full_vs_borg={ratios['full_vs_borg']:.3f}")
    print(f"ratio incremental_vs_borg={ratios['incremental_vs_borg']:.3f}")
    print(f"ratio restore_vs_restic={ratios['restore_vs_restic']:.3f}", flush=True)
    if not results["verified"]:
        return 1
    if args.strict and not all(results["targets_met"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
