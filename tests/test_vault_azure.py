"""The vault over Azure Blob Storage, against a real Azurite (tools/azurite): what is
specific to Azure. The Backend contract and the vault over it run on Azure too, in
tests/test_backend_contract.py, which uses the Azurite fixture defined here.

The Azurite fixture installs the pinned npm package on first use (`npm ci` in
tools/azurite), starts `azurite-blob` on a free loopback port with a temporary data
directory, and stops it after the module.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from frostpoint.vault import Vault
from frostpoint.vault.azure import AzureBlobBackend
from frostpoint.vault.format import BLOCK_SIZE
from test_vault import (
    BIG,
    kill_backup,
    make_image,
    rand_block,
    sha256,
    text_block,
)

BS = BLOCK_SIZE  # the block size of new vaults
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
AZURITE_DIR = ROOT / "tools" / "azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
CONTAINER = "vaults"
# Azurite's well-known development account (public, documented; loopback only).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
           "KBHBeksoGMGw==")


# --- Azurite -------------------------------------------------------------------------

def _install_azurite() -> None:
    """`npm ci` in tools/azurite unless already installed (a fresh clone installs it)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed for the Azure tests (Azurite): install the "
                    "Debian packages nodejs and npm")
    # One installer at a time, should several test processes start together.
    with open(Path(tempfile.gettempdir()) / "frostpoint-azurite-npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if AZURITE_BIN.exists():
            return
        verb = "ci" if (AZURITE_DIR / "package-lock.json").exists() else "install"
        cmd = [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            p = subprocess.run(cmd, cwd=AZURITE_DIR, capture_output=True, text=True,
                               timeout=900, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm {verb}` in {AZURITE_DIR} took over 15 minutes: is the npm "
                        "registry reachable?")
        if p.returncode != 0 or not AZURITE_BIN.exists():
            out = (p.stdout + p.stderr)[-3000:]
            hint = ""
            if any(s in out for s in ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN",
                                      "ECONNRESET", "network")):
                hint = "\nThe npm registry could not be reached; the Azure tests need it " \
                       "once, to install Azurite."
            pytest.fail(f"could not install Azurite: `npm {verb}` in {AZURITE_DIR} exited "
                        f"{p.returncode}{hint}\n{out}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Azurite goes away even if pytest itself is killed with SIGKILL.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # 4xx for an unsigned request: the server is up
    except OSError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    if proc.poll() is not None:
        return
    # Its own session: Azurite and nothing else. After SIGTERM Azurite closes its
    # server but node lingers while clients keep idle connections open: once it says
    # it closed (or after a few seconds) SIGKILL ends it; its data is thrown away.
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while proc.poll() is None and time.monotonic() < deadline:
        if "successfully closed" in log_path.read_text(errors="replace"):
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def azurite() -> Iterator[str]:
    """A running Azurite blob service; yields its connection string."""
    _install_azurite()
    workdir = Path(tempfile.mkdtemp(prefix="fp-azurite-"))
    log_path = workdir / "azurite.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(3):  # the free port may be taken before Azurite binds it
            port = _free_port()
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                     "--location", str(workdir / "data"), "--silent",
                     "--skipApiVersionCheck", "--loose"],
                    cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, preexec_fn=_die_with_parent)
            url = f"http://127.0.0.1:{port}/{DEV_ACCOUNT}"
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and not _answers(url):
                time.sleep(0.1)
            if proc.poll() is None and _answers(url):
                break
            _stop(proc, log_path)
        else:
            pytest.fail("Azurite did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        yield (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};"
               f"AccountKey={DEV_KEY};BlobEndpoint={url};")
    finally:
        if proc is not None:
            _stop(proc, log_path)
        shutil.rmtree(workdir, ignore_errors=True)


# Image helpers are shared with the local-vault tests.


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend(azurite: str, prefix: str) -> AzureBlobBackend:
    return AzureBlobBackend(azurite, CONTAINER, prefix)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


# --- what only Azure has: prefixes, containers, URLs --------------------------------


def test_prefix_isolation(azurite: str) -> None:
    tag = uuid.uuid4().hex[:8]
    a = AzureBlobBackend(azurite, CONTAINER, f"iso-{tag}/v1")
    a10 = AzureBlobBackend(azurite, CONTAINER, f"iso-{tag}/v10/")  # "v1" is its prefix
    a.put("config", b"a")
    a10.put("config", b"a10")
    a10.put("index/x", b"i")
    assert a.get("config") == b"a" and a10.get("config") == b"a10"
    assert a.list("") == ["config"]
    assert a10.list("") == ["config", "index/x"]
    assert not a.exists("index/x")
    a.delete("config")
    assert a10.get("config") == b"a10"
    whole = AzureBlobBackend(azurite, CONTAINER, f"iso-{tag}")
    assert whole.list("") == ["v10/config", "v10/index/x"]
    with pytest.raises(ValueError):
        AzureBlobBackend(azurite, CONTAINER, "a/../b")


def test_two_vaults_share_a_container(tmp_path: Path, azurite: str, key: bytes) -> None:
    tag = uuid.uuid4().hex[:8]
    img1 = make_image(tmp_path / "1.img", 2 * BS, {0: rand_block(11), 1: text_block(12)})
    img2 = make_image(tmp_path / "2.img", BS, {0: rand_block(13)})
    v1 = Vault.create(AzureBlobBackend(azurite, CONTAINER, f"share-{tag}/one"), key)
    v2 = Vault.create(AzureBlobBackend(azurite, CONTAINER, f"share-{tag}/two"), key)
    v1.backup("rp", {"disk0": img1})
    assert v2.backup("rp", {"disk0": img2}).chunks_new == 1  # no dedup across vaults
    for v, img in ((v1, img1), (v2, img2)):
        again = Vault.open(v.backend, key)
        assert again.list_restore_points() == ["rp"]
        out = tmp_path / f"{v.vault_id}.img"
        again.restore_disk("rp", "disk0", out)
        assert sha256(out) == sha256(img)
        assert again.verify().ok


def test_container_is_created(azurite: str) -> None:
    name = f"new-{uuid.uuid4().hex[:10]}"
    b = AzureBlobBackend(azurite, name, "p")
    b.put("config", b"x")
    assert AzureBlobBackend(azurite, name, "p").get("config") == b"x"  # exists: fine
    with pytest.raises(ValueError):
        AzureBlobBackend(azurite, "Bad_Name", "p")


def test_from_url(azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_TEST_AZ", azurite)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    b = AzureBlobBackend.from_url(
        f"azure://{CONTAINER}/url-{uuid.uuid4().hex[:8]}/vault?connection_string_env=FP_TEST_AZ")
    b.put("config", b"c")
    assert b.get("config") == b"c"
    assert b.container == CONTAINER and b.prefix.endswith("/vault")
    d = AzureBlobBackend.from_url(f"azure://{CONTAINER}")   # default variable, no prefix
    assert d.prefix == "" and d.exists(f"{b.prefix}/config")
    assert "azure://" in repr(b) and "AccountKey" not in repr(b)

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    for bad, words in [
        (f"azure://{CONTAINER}/x", "AZURE_STORAGE_CONNECTION_STRING"),
        (f"azure://{CONTAINER}/x?connection_string_env=NOPE_NOT_SET", "NOPE_NOT_SET"),
        (f"azure://{CONTAINER}/x?account_key=secret", "unknown option"),
        ("s3://bucket/x", "azure://CONTAINER"),
        ("azure:///x", "azure://CONTAINER"),
    ]:
        with pytest.raises(ValueError, match=words):
            AzureBlobBackend.from_url(bad)


# --- crash safety --------------------------------------------------------------------

CRASH_SCRIPT = """
import sys
from pathlib import Path
from frostpoint.vault import Vault, pacing
from frostpoint.vault.azure import AzureBlobBackend
url, key, rp, img = sys.argv[1:5]
v = Vault.open(AzureBlobBackend.from_url(url), bytes.fromhex(key))
pacing.PROGRESS_EVERY_S = 0.0  # every block: the test kills at exact points
print("ready", flush=True)
v.backup(rp, {"disk0": Path(img)}, progress=lambda d, t: print(d, flush=True))
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = tmp_path_factory.mktemp("azcrash") / "big.img"
    img.write_bytes(random.Random(64).randbytes(BIG))
    return img


def _assert_consistent(backend: AzureBlobBackend, key: bytes, img: Path,
                       tmp_path: Path) -> list[str]:
    for name in backend.list("index/"):   # an index never exists without its pack
        p = name.split("/")[1]
        assert backend.exists(f"packs/{p[:2]}/{p}"), f"index {p} without its pack"
    v = Vault.open(backend, key)
    assert v.damaged_indexes == []
    report = v.verify()
    assert report.ok, report
    rps = v.list_restore_points()
    for rp in rps:                        # every listed restore point is complete
        out = tmp_path / f"check-{rp}.img"
        v.restore_disk(rp, "disk0", out)
        assert sha256(out) == sha256(img)
        out.unlink()
    return rps


# Packs of about 11 MiB are over the single-put size, so each pack upload is
# staged blocks + a commit: kills land between blocks, between a pack and its index, ...
@pytest.mark.parametrize("kind,when,surely_unfinished", [
    ("time", 0.3, False), ("time", 1.0, False),
    ("progress", 3 * BIG // 16, True), ("progress", 9 * BIG // 16, True),
    ("progress", BIG, False),  # all blocks read: last pack, index or manifest
])
def test_kill_9_during_azure_backup_leaves_a_usable_vault(
        tmp_path: Path, azurite: str, prefix: str, key: bytes, big_image: Path,
        kind: str, when: float, surely_unfinished: bool) -> None:
    backend = AzureBlobBackend(azurite, CONTAINER, prefix)
    Vault.create(backend, key, pack_target_size=12 * 1024 * 1024)
    img = big_image
    url = f"azure://{CONTAINER}/{prefix}?connection_string_env=FP_CRASH_AZ"
    returncode = kill_backup(
        [sys.executable, "-c", CRASH_SCRIPT, url, key.hex(), "rp1", str(img)],
        env={"FP_CRASH_AZ": azurite},
        **({"after_s": when} if kind == "time" else {"at_progress": int(when)}))

    rps = _assert_consistent(backend, key, img, tmp_path)
    assert rps in ([], ["rp1"])
    if surely_unfinished:
        assert returncode == -signal.SIGKILL and rps == []

    v = Vault.open(AzureBlobBackend(azurite, CONTAINER, prefix), key)
    stats = v.backup("after-crash", {"disk0": img})
    assert stats.chunks_new + stats.chunks_reused == BIG // BS
    out = tmp_path / "final.img"
    v.restore_disk("after-crash", "disk0", out)
    assert sha256(out) == sha256(img)
    assert "after-crash" in _assert_consistent(backend, key, img, tmp_path)


PUT_SCRIPT = """
import sys
from frostpoint.vault.azure import AzureBlobBackend
b = AzureBlobBackend.from_url(sys.argv[1], max_concurrency=1)
data = bytes([int(sys.argv[2])]) * (64 * 1024 * 1024)
print("ready", flush=True)
b.put("packs/00/target", data)
print("done", flush=True)
"""


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_killed_put_leaves_old_or_new_object(azurite: str, prefix: str,
                                             delay: float, replace: bool) -> None:
    # 64 MiB in 8 MiB blocks, one at a time: kills land while blocks are staged.
    backend = AzureBlobBackend(azurite, CONTAINER, prefix)
    old = b"old contents"
    if replace:
        backend.put("packs/00/target", old)
    env = {**os.environ, "PYTHONPATH": str(SRC), "FP_CRASH_AZ": azurite}
    url = f"azure://{CONTAINER}/{prefix}?connection_string_env=FP_CRASH_AZ"
    proc = subprocess.Popen([sys.executable, "-c", PUT_SCRIPT, url, "7"],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    new = b"\x07" * (64 * 1024 * 1024)
    if replace:
        assert backend.get("packs/00/target") in (old, new)
        assert backend.list("") == ["packs/00/target"]
    elif backend.exists("packs/00/target"):
        assert backend.get("packs/00/target") == new
        assert backend.list("") == ["packs/00/target"]
    else:  # staged but uncommitted blocks are no object
        assert backend.list("") == []
        with pytest.raises(FileNotFoundError):
            backend.get_range("packs/00/target", 0, 1)
