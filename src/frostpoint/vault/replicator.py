"""Copying restore points from one vault into another (`vault replicate`).

The two vaults have keys of their own, so a chunk's id and its sealed bytes differ
between them: a chunk is read from the source (decrypted and re-hashed there), its id
is computed under the target's key, and it is sealed and packed for the target only
when the target lacks it. Which source chunk is which target chunk is known from the
restore points both vaults already hold (the same block of the same disk), so a
chunk copied once is never read again. Each restore point is written in the target's
commit order (packs, their indexes, then the manifest, last), after every chunk it
wrote was read back from the target and checked: a crash leaves no half restore
point, and a run after it finds the chunks already there (docs/vault-format.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from frostpoint.vault import format as fmt
from frostpoint.vault.errors import Cancelled
from frostpoint.vault.pacing import Progress, cancel_check, throttled
from frostpoint.vault.packer import PackWriter
from frostpoint.vault.repo import Repository
from frostpoint.vault.reports import BackupStats
from frostpoint.vault.restorer import read_chunk


@dataclass
class ReplicationReport:
    copied: list[str] = field(default_factory=list)    # restore points written now
    present: list[str] = field(default_factory=list)   # already in the target
    chunks_copied: int = 0     # sealed and written to the target
    chunks_reused: int = 0     # the target had them already
    chunks_verified: int = 0   # read back from the target after writing
    bytes_read: int = 0        # plaintext read from the source
    bytes_stored: int = 0      # sealed bytes written to the target's packs
    duration_s: float = 0.0


def _cancelled() -> Cancelled:
    return Cancelled("replication cancelled")


def known_chunks(src: Repository, dst: Repository, rp_ids: list[str]) -> dict[str, str]:
    """Source chunk id -> target chunk id (hex), from restore points both hold."""
    pairs: dict[str, str] = {}
    for rp_id in rp_ids:
        a, b = src.read_manifest(rp_id), dst.read_manifest(rp_id)
        for name, disk in a["disks"].items():
            other = b["disks"].get(name)
            if other is None or len(other["blocks"]) != len(disk["blocks"]):
                continue
            for x, y in zip(disk["blocks"], other["blocks"], strict=True):
                if x is not None and y is not None:
                    pairs[x] = y
    return pairs


def replicate(src: Repository, dst: Repository, rp_ids: list[str],
              progress: Progress | None = None,
              should_cancel: Callable[[], bool] | None = None,
              on_copied: Callable[[str], None] | None = None) -> ReplicationReport:
    """Copy the restore points rp_ids of src that dst lacks into dst."""
    t0 = time.monotonic()
    report = ReplicationReport()
    in_dst = set(dst.list_restore_points())
    report.present = [r for r in rp_ids if r in in_dst]
    todo = [r for r in rp_ids if r not in in_dst]
    pairs = known_chunks(src, dst, report.present)
    docs = {r: src.read_manifest(r) for r in todo}
    total = sum(int(d["size"]) for doc in docs.values() for d in doc["disks"].values())
    done = 0
    check = cancel_check(should_cancel, _cancelled)
    progress = throttled(progress)
    for rp_id, doc in docs.items():
        with dst.backup_lock:  # GC of the target must not sweep packs not yet named
            if dst.backend.exists(fmt.manifest_name(rp_id)):
                continue
            stats = BackupStats()
            writer = PackWriter(dst, stats)
            written: list[bytes] = []
            disks = {}
            try:
                for name, d in doc["disks"].items():
                    size, bs = int(d["size"]), int(d["block_size"])
                    blocks: list[str | None] = []
                    for i, h in enumerate(d["blocks"]):
                        check()
                        n = min(bs, size - i * bs)
                        done += n
                        if h is None:
                            blocks.append(None)
                            continue
                        mapped = pairs.get(h)
                        if mapped is not None and writer.knows(bytes.fromhex(mapped)):
                            report.chunks_reused += 1
                            blocks.append(mapped)
                        else:
                            got = _copy_chunk(src, dst, writer, h, written, report,
                                              {"restore_point": rp_id, "disk": name,
                                               "offset": i * bs})
                            pairs[h] = got
                            blocks.append(got)
                        if progress is not None:
                            progress(done, total)
                    disks[name] = {"size": size, "block_size": bs, "blocks": blocks}
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            for cid in written:  # what was written is read back before it is named
                read_chunk(dst, cid, {"restore_point": rp_id})
                report.chunks_verified += 1
            report.bytes_stored += stats.bytes_stored
            check()
            copy = {**doc, "vault_id": dst.vault_id, "disks": disks}
            # The manifest, last: from this put on the restore point is in the target.
            dst.backend.put(fmt.manifest_name(rp_id), dst.keys.seal(
                fmt.encode_manifest(copy), fmt.manifest_aad(rp_id)))
        report.copied.append(rp_id)
        if on_copied is not None:
            on_copied(rp_id)
    if progress is not None:
        progress(total, total)
    report.duration_s = time.monotonic() - t0
    return report


def _copy_chunk(src: Repository, dst: Repository, writer: PackWriter, h: str,
                written: list[bytes], report: ReplicationReport,
                where: dict[str, object]) -> str:
    """The target's id of source chunk h, sealing it for the target if it lacks it."""
    plain = b"".join(read_chunk(src, bytes.fromhex(h), dict(where)))
    report.bytes_read += len(plain)
    digests = dst.keys.frame_digests(plain)
    cid = dst.keys.id_of_digests(digests)
    if writer.knows(cid):
        report.chunks_reused += 1
    else:
        writer.add(cid, dst.keys.seal_chunk(cid, dst.keys.encode_block(plain, digests)))
        written.append(cid)
        report.chunks_copied += 1
    return cid.hex()
