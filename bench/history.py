"""Frostpoint over a long history (issue 14): 18 backups with ~1 % churn, two datasets.

    make bench                  # both datasets, 18 backups each (about 20-30 min)
    make bench BENCH_QUICK=1    # one dataset, 4 backups (about 4 min)
    .venv/bin/python bench/history.py [--quick] [--backups N] [--datasets files,mixed]

For every backup: the freeze window the extension reports with the live image's extent
count (filefrag) just before it, the transfer and the job, how late `backup now --wait`
(the CLI, a real process) returned after the job's end, and `borg create` of the very
same snapshot image. Then, once per dataset: a cold sequential read of the first
snapshot's allocated bytes (the floor a full backup can reach), restores from the vault
(against `restic restore` of the same image) and from the instant tier, the peak RSS of
the service, and the stored bytes of the three tools. Every target is printed with its
figure and PASS/FAIL, with the machine's load average; results in
bench/results/history-*.json. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import run as classic  # the pair benchmark's helpers (bench/run.py)
from cpu import Contention
from service import MemoryProbe, Service
from tools import ensure_installed, timed

MACHINE, DISK, DISK_SIZE, DISK_GIB = "bench", "data", "2G", 2
MB = 1_000_000
PASSWORD = classic.PASSWORD
TARGETS = {  # name: (limit, what, unit); each figure must be <= its limit
    "freeze_median_ms": (15.0, "freeze window, median over the backups", " ms"),
    "freeze_max_ms": (50.0, "freeze window, max over the backups", " ms"),
    "orchestration_max_s": (0.25, "job time - transfer time, max", " s"),
    "wait_return_max_s": (0.2, "`backup now --wait` returns after the job's end, max", " s"),
    "restore_wait_return_s": (0.2, "`restore --wait` returns after the job's end", " s"),
    "incremental_vs_borg_max": (0.05, "incremental transfer / borg create, worst backup", ""),
    "full_vs_cold_read": (1.5, "full transfer / cold read of the allocated bytes", ""),
    "full_vs_borg": (0.3, "full transfer / borg create", ""),
    "restore_vs_restic": (0.5, "restore from the vault / restic restore", ""),
    "instant_restore_s_per_gib": (0.1, "restore from the instant tier, per GiB of disk", " s"),
    "peak_rss_mb": (300.0, "peak RSS of the service, transfers and restores", " MB"),
    "vault_vs_borg_bytes": (1.1, "vault bytes / borg repository bytes", ""),
}
DATASETS = {"files": ("generate", "change"), "mixed": ("generate-mixed", "change-mixed")}
say = classic.say


def load() -> str:
    return Path("/proc/loadavg").read_text().strip()


def extents(path: Path) -> int:
    out = subprocess.run(["filefrag", str(path)], capture_output=True, text=True).stdout
    return int(out.rsplit(":", 1)[1].split()[0])


def ended(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["ended_at"].replace("Z", "+00:00")).timestamp()


def cli(svc: Service, *args: str) -> tuple[dict[str, Any], float]:
    """Run the CLI as a user would; the job it printed and when the process ended."""
    p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", *args, "--json"],
                       env=svc.env, capture_output=True, text=True)
    at = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"frostpoint {' '.join(args)}: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    return json.loads(p.stdout), at


def backup(svc: Service, image: Path, n: int) -> dict[str, Any]:
    before = extents(image)
    prep = classic.prepare_step()
    with Contention(svc.pid) as cpu, MemoryProbe(svc.pid) as mem:
        job, returned = cli(svc, "backup", "now", MACHINE, "--wait")
    job = svc.client.get(f"/jobs/{job['id']}")  # the whole job, details included
    d = job.get("details") or {}
    tr = d["transfer"]
    snap = Path(d["snapshot"]["dir"]) / f"{DISK}.img"
    out = {"n": n, "job_id": job["id"], "restore_point": d["restore_point"],
           "snapshot": str(snap), "extents": before, "freeze_ms": d.get("freeze_ms"),
           "snapshot_ms": d["snapshot"].get("durationMs"), "job_s": job["duration_s"],
           "transfer_s": tr["duration_s"], "orchestration_s": job["duration_s"] - tr["duration_s"],
           "wait_return_s": returned - ended(job), "bytes_read": tr.get("bytes_read"),
           "peak_rss": mem.peak, "load": load(), "prepare": prep, **cpu.result(),
           "subtasks_s": {t["name"]: classic.subtask_s(job, t["name"]) for t in job["subtasks"]}}
    say(f"  backup {n}: {before} extents, freeze {out['freeze_ms']} ms, transfer "
        f"{out['transfer_s']:.2f} s, job-transfer {out['orchestration_s']:.2f} s, --wait "
        f"+{out['wait_return_s']:.2f} s, RSS {mem.peak / MB:.0f} MB, load {out['load']}")
    return out


def borg_create(work: Path, env: dict[str, str], image: Path, n: int) -> float:
    classic.prepare_step()
    t = timed(["borg", "create", "--compression", "zstd,3", f"{work / 'borg'}::b{n}",
               str(image)], env, work / "logs" / f"borg-{n}")
    return t.seconds


def cold_read(image: Path) -> dict[str, Any]:
    """Read the allocated ranges of the image in order, page cache dropped first."""
    classic.prepare_step()
    fd = os.open(image, os.O_RDONLY)
    t0, total = time.monotonic(), 0
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for off in range(start, end, 8 << 20):
                total += len(os.pread(fd, min(8 << 20, end - off), off))
            pos = end
    finally:
        os.close(fd)
    return {"s": time.monotonic() - t0, "bytes": total}


def restic_all(work: Path, images: list[Path]) -> dict[str, Any]:
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(work / "restic"),
           "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    timed(["restic", "init"], env, work / "logs" / "restic-init")
    for k, img in enumerate(images):
        timed(["restic", "backup", str(img)], env, work / "logs" / f"restic-{k}")
    target = work / "restore-restic"
    classic.prepare_step()
    t = timed(["restic", "restore", "latest", "--target", str(target)], env,
              work / "logs" / "restic-restore")
    t1 = time.monotonic()
    os.sync()  # Frostpoint's restore fsyncs its image; so do we
    return {"restore_s": t.seconds + time.monotonic() - t1, "repo_bytes": classic.du(
        work / "restic")}


def restore(svc: Service, rp: str, to: Path, source: str) -> dict[str, Any]:
    classic.prepare_step()
    with MemoryProbe(svc.pid) as mem:
        job, returned = cli(svc, "restore", "disks", rp, "--to", str(to), "--source", source,
                            "--wait")
    to_s = job["duration_s"]
    say(f"  restore from {source}: job {to_s:.2f} s, --wait +{returned - ended(job):.2f} s, "
        f"RSS {mem.peak / MB:.0f} MB")
    return {"job_s": to_s, "wait_return_s": returned - ended(job), "peak_rss": mem.peak}


def one_dataset(work_root: Path, name: str, backups: int) -> dict[str, Any]:
    gen_cmd, change_cmd = DATASETS[name]
    work = Path(tempfile.mkdtemp(prefix=f"fp-history-{name}-", dir=work_root))
    (work / "logs").mkdir()
    (work / "fp").mkdir()
    svc = Service(work / "fp")
    borg_env = {**os.environ, "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "bh"),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    try:
        svc.start()
        c = svc.client
        c.post("/vaults", {"name": "v"})
        c.post("/policies", {"name": "p"})
        c.post("/machines", {"name": MACHINE, "disks": [{"name": DISK, "size": DISK_SIZE,
                                                         "filesystem": "ext4"}]})
        svc.wait_agent_ready(MACHINE)
        c.post("/protection/enable", {"machine": MACHINE, "vault": "v", "policy": "p"})
        svc.wait_agent_ready(MACHINE)
        image = svc.data_dir / "pool" / "disks" / MACHINE / f"{DISK}.img"
        # The guest has its own root: the generator goes in as the program text.
        gen = ["python3", "-c", (classic.BENCH / "dataset.py").read_text()]
        say(f"[bold]{name}[/]: generating the dataset in the machine")
        dataset = json.loads(svc.exec(MACHINE, [*gen, gen_cmd, f"/mnt/{DISK}"]))
        timed(["borg", "init", "--encryption=repokey", str(work / "borg")], borg_env,
              work / "logs" / "borg-init")
        steps: list[dict[str, Any]] = []
        for n in range(1, backups + 1):
            if n > 1:
                svc.exec(MACHINE, [*gen, change_cmd, f"/mnt/{DISK}", str(n)])
            st = backup(svc, image, n)
            st["borg_s"] = borg_create(work, borg_env, Path(st["snapshot"]), n)
            st["vs_borg"] = st["transfer_s"] / st["borg_s"]
            say(f"    borg {st['borg_s']:.2f} s: ratio {st['vs_borg']:.3f}")
            if n == 1:
                floor = cold_read(Path(st["snapshot"]))
                say(f"  cold read of {floor['bytes'] / MB:.0f} MB allocated: {floor['s']:.2f} s")
            steps.append(st)
        last = steps[-1]
        vault_bytes = classic.du(svc.data_dir / "vaults" / "v")
        from_vault = restore(svc, last["restore_point"], work / "r-vault", "vault")
        instant = restore(svc, last["restore_point"], work / "r-instant", "instant")
        restic = restic_all(work, [Path(s["snapshot"]) for s in steps])
        say(f"  restic restore {restic['restore_s']:.2f} s")
        want = classic.sha256(Path(last["snapshot"]))
        verified = all(classic.sha256(work / d / f"{DISK}.img") == want
                       for d in ("r-vault", "r-instant"))
        borg_bytes = classic.du(work / "borg")
    finally:
        classic.cleanup(svc, work)
    freeze = [s["freeze_ms"] for s in steps if s["freeze_ms"] is not None]
    incr = [s["vs_borg"] for s in steps[1:]] or [0.0]
    figures = {
        "freeze_median_ms": statistics.median(freeze), "freeze_max_ms": max(freeze),
        "orchestration_max_s": max(s["orchestration_s"] for s in steps),
        "wait_return_max_s": max(s["wait_return_s"] for s in steps),
        "restore_wait_return_s": max(from_vault["wait_return_s"], instant["wait_return_s"]),
        "incremental_vs_borg_max": max(incr),
        "full_vs_cold_read": steps[0]["transfer_s"] / floor["s"],
        "full_vs_borg": steps[0]["vs_borg"],
        "restore_vs_restic": from_vault["job_s"] / restic["restore_s"],
        "instant_restore_s_per_gib": instant["job_s"] / DISK_GIB,
        "peak_rss_mb": max([s["peak_rss"] for s in steps]
                           + [from_vault["peak_rss"], instant["peak_rss"]]) / MB,
        "vault_vs_borg_bytes": vault_bytes / borg_bytes,
    }
    return {"dataset": name, "generated": dataset, "backups": steps, "cold_read": floor,
            "restore_vault": from_vault, "restore_instant": instant, "restic": restic,
            "bytes": {"vault": vault_bytes, "borg": borg_bytes, "restic": restic["repo_bytes"]},
            "verified": verified, "figures": figures}


def commit() -> str:
    r = subprocess.run(["git", "-C", str(classic.BENCH), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(classic.BENCH), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("+dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("BENCH_QUICK")),
                    help="one dataset, 4 backups (or $BENCH_QUICK)")
    ap.add_argument("--backups", type=int, default=0, help="backups per dataset (18)")
    ap.add_argument("--datasets", default="", help="files,mixed")
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="wait up to this long for a quiet machine before each timed step")
    ap.add_argument("--work-dir", default=os.environ.get("FROSTPOINT_BENCH_DIR", "/var/tmp"))
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/history.py needs root (sandbox machines, drop_caches)", file=sys.stderr)
        return 2
    classic.QUIET_WAIT = args.quiet_wait
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a kill still cleans up (one_dataset)
        signal.signal(sig, classic._on_signal)
    backups = args.backups or (4 if args.quick else 18)
    names = (args.datasets or ("files" if args.quick else "files,mixed")).split(",")
    tools = ensure_installed()
    started, load_before = datetime.now(UTC).isoformat(timespec="seconds"), load()
    results = []
    for n in names:
        try:
            results.append(one_dataset(Path(args.work_dir), n, backups))
        except Exception as e:  # noqa: BLE001 - the other dataset's figures still count
            say(f"[red]{n} dataset failed: {type(e).__name__}: {e}[/]")
    res = {"started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
           "commit": commit(), "load_before": load_before, "load_after": load(),
           "machine": classic.machine_info(Path(args.work_dir)), "tools": tools,
           "backups": backups, "targets": {k: v[0] for k, v in TARGETS.items()},
           "datasets": results}
    out_dir = classic.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    text = json.dumps(res, indent=2, default=str) + "\n"
    (out_dir / f"history-{stamp}.json").write_text(text)
    (out_dir / "history-latest.json").write_text(text)
    print(f"commit {res['commit']}, {backups} backups per dataset, load average "
          f"{load_before} (start) / {res['load_after']} (end); {os.cpu_count()} CPUs shared")
    missed = 0
    for r in results:
        print(f"\n{r['dataset']} dataset: {r['generated']['bytes_written'] / MB:.0f} MB "
              f"written; extents per backup "
              f"{[s['extents'] for s in r['backups']]}; freeze ms "
              f"{[s['freeze_ms'] for s in r['backups']]}; restored images identical: "
              f"{'yes' if r['verified'] else 'NO'}; stored MB vault/borg/restic "
              f"{r['bytes']['vault'] / MB:.0f}/{r['bytes']['borg'] / MB:.0f}/"
              f"{r['bytes']['restic'] / MB:.0f}")
        for key, (limit, what, unit) in TARGETS.items():
            v = r["figures"][key]
            ok = v <= limit
            missed += not ok
            print(f"  {'PASS' if ok else 'FAIL'}  {what}: {v:.3f}{unit} (target <= {limit}{unit})")
    print(f"\nresults: {out_dir / 'history-latest.json'}")
    ok = len(results) == len(names) and all(r["verified"] for r in results)
    return 1 if not ok or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
