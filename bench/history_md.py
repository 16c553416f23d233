"""The tables of docs/benchmarks.md from a history run's JSON.

    .venv/bin/python bench/history_md.py [bench/results/history-latest.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from history import TARGETS

MB = 1_000_000


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else
                Path(__file__).parent / "results" / "history-latest.json")
    res = json.loads(path.read_text())
    print(f"Commit `{res['commit']}`, {res['started']} to {res['finished']}, "
          f"{res['backups']} backups per dataset; load average {res['load_before']} at the "
          f"start and {res['load_after']} at the end ({res['machine']['cpus']} CPUs).\n")
    names = [d["dataset"] for d in res["datasets"]]
    print("| target | " + " | ".join(names) + " | limit |")
    print("|---|" + "---:|" * len(names) + "---|")
    for key, (limit, what, unit) in TARGETS.items():
        cells = []
        for d in res["datasets"]:
            v = d["figures"][key]
            cells.append(f"{v:.3f}{unit} {'PASS' if v <= limit else '**FAIL**'}")
        print(f"| {what} | " + " | ".join(cells) + f" | ≤ {limit}{unit} |")
    for d in res["datasets"]:
        b = d["bytes"]
        print(f"\n**{d['dataset']}**: {d['generated']['bytes_written'] / MB:.0f} MB written; "
              f"cold read of {d['cold_read']['bytes'] / MB:.0f} MB allocated "
              f"{d['cold_read']['s']:.2f} s; stored after the history: vault "
              f"{b['vault'] / MB:.0f} MB, borg {b['borg'] / MB:.0f} MB, restic "
              f"{b['restic'] / MB:.0f} MB; restic restore {d['restic']['restore_s']:.2f} s; "
              f"restores identical to the snapshot: {'yes' if d['verified'] else 'NO'}.\n")
        print("| backup | extents | freeze ms | host snapshot ms | transfer s | borg s | "
              "ratio | job − transfer s | `--wait` late s | peak RSS MB | load (1 min) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in d["backups"]:
            print(f"| {s['n']} | {s['extents']} | {s['freeze_ms']} | {s['snapshot_ms']} | "
                  f"{s['transfer_s']:.2f} | {s['borg_s']:.2f} | {s['vs_borg']:.3f} | "
                  f"{s['orchestration_s']:.2f} | {s['wait_return_s']:.2f} | "
                  f"{s['peak_rss'] / MB:.0f} | {s['load'].split()[0]} |")


if __name__ == "__main__":
    main()
