"""On-storage layout of a vault (see docs/vault-format.md). Pure encode/decode, no I/O."""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from frostpoint.vault.errors import InvalidRequest, VaultCorrupt, WrongKey

FORMAT_NAME = "frostpoint-vault"
# 3: chunks are a sealed frame table and sealed frames of 256 KiB; a frame may be kept
# in a base chunk (docs/vault-format.md). 4: `config` settings and `gc/pending` are
# sealed too. Older vaults are refused (pre-release: no migration).
FORMAT_VERSION = 4
# Block (= chunk) size of new vaults: 4 MiB, as the architecture has it. Each vault
# records its own in `config` (vault create --block-size), and every manifest the one it
# was written with. An incremental stores only the 256 KiB frames a change touches,
# whatever the block size (docs/vault-format.md).
BLOCK_SIZE = 4 * 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 16 * 1024 * 1024
DEFAULT_PACK_TARGET = 16 * 1024 * 1024  # three in flight at most: bounded memory
CHUNK_ID_SIZE = 32

CONFIG = "config"
PACKS = "packs/"
INDEX = "index/"
MANIFESTS = "manifests/"
GC_PENDING = "gc/pending"

KEYCHECK_PLAINTEXT = b"frostpoint-vault keycheck v1"

_INDEX_MAGIC = b"FPIX\x02"
# chunk id, offset in pack, sealed length, base chunk id (zeros: none). GC keeps a
# chunk's base alive without opening the chunk.
_INDEX_REC = struct.Struct("<32sQI32s")
_NO_BASE = bytes(32)
_PACK_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_RP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --- object names -------------------------------------------------------------------

def pack_name(pack_id: str) -> str:
    # Fan out by the first byte so no directory / listing page gets huge.
    return f"{PACKS}{pack_id[:2]}/{pack_id}"


def index_name(pack_id: str) -> str:
    return f"{INDEX}{pack_id}"


def manifest_name(rp_id: str) -> str:
    return f"{MANIFESTS}{rp_id}"


def is_pack_id(s: str) -> bool:
    return bool(_PACK_ID_RE.match(s))


def is_vault_object(name: str) -> bool:
    """Whether `name` is one the vault format writes. `vault delete` removes only these,
    so files someone else put into the location survive."""
    if name in (CONFIG, GC_PENDING):
        return True
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == PACKS[:-1]:
        return is_pack_id(parts[2]) and parts[1] == parts[2][:2]
    if len(parts) == 2 and parts[0] == INDEX[:-1]:
        return is_pack_id(parts[1])
    if len(parts) == 2 and parts[0] == MANIFESTS[:-1]:
        return bool(_RP_ID_RE.match(parts[1]))
    return False


def check_rp_id(rp_id: str) -> None:
    if not isinstance(rp_id, str) or not _RP_ID_RE.match(rp_id):
        raise InvalidRequest(f"invalid restore point id {rp_id!r}: use 1-128 of A-Z a-z 0-9 . _ - "
                             "(not starting with a punctuation character)")


# --- AAD: binds each sealed object to its role and name, so objects cannot be swapped.

def chunk_table_aad(chunk_id: bytes) -> bytes:
    return b"frostpoint:chunk-table:" + chunk_id


def chunk_data_aad(chunk_id: bytes) -> bytes:
    return b"frostpoint:chunk-data:" + chunk_id


def index_aad(pack_id: str) -> bytes:
    return f"frostpoint:index:{pack_id}".encode()


def manifest_aad(rp_id: str) -> bytes:
    return f"frostpoint:manifest:{rp_id}".encode()


def keycheck_aad(vault_id: str) -> bytes:
    return f"frostpoint:keycheck:{vault_id}".encode()


def valid_block_size(n: int) -> bool:
    """A multiple of 4 KiB (pages, filesystem blocks) from 64 KiB to 16 MiB."""
    return MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE and n % 4096 == 0


# --- config ---------------------------------------------------------------------------

class Sealer(Protocol):
    """What config and gc/pending need of crypto.VaultKeys (crypto imports this module)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes: ...


MAX_PACK_TARGET = 1 << 30
_VAULT_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def config_aad(vault_id: str) -> bytes:
    return f"frostpoint:config:{vault_id}".encode()


def pending_aad(vault_id: str) -> bytes:
    return f"frostpoint:gc-pending:{vault_id}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class VaultConfig:
    vault_id: str
    block_size: int
    pack_target_size: int
    created: str
    version: int = FORMAT_VERSION

    def to_bytes(self, keys: Sealer) -> bytes:
        """The `config` object: the vault id and a key check in clear, the settings
        sealed (authenticated) with the vault key, bound to the vault id."""
        settings = {"vault_id": self.vault_id, "block_size": self.block_size,
                    "pack_target_size": self.pack_target_size, "created": self.created}
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "vault_id": self.vault_id,
            "keycheck": _b64(keys.seal(KEYCHECK_PLAINTEXT, keycheck_aad(self.vault_id))),
            "settings": _b64(keys.seal(json.dumps(settings, sort_keys=True).encode(),
                                       config_aad(self.vault_id))),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, keys: Sealer) -> VaultConfig:
        """Parse and authenticate `config`. Wrong key: InvalidInput; a config that was
        changed on storage: VaultDataCorrupt; another format version: InvalidInput."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
                raise ValueError("not a frostpoint vault config")
            version = int(doc["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise VaultCorrupt(f"vault config is not valid: {e}") from None
        if version != FORMAT_VERSION:
            raise InvalidRequest(
                f"vault format version {version} is not supported "
                f"(this Frostpoint reads version {FORMAT_VERSION}; older vaults are not "
                "migrated: see docs/vault-format.md)")
        try:
            vault_id = str(doc["vault_id"])
            if not _VAULT_ID_RE.match(vault_id):
                raise ValueError("bad vault id")
            keycheck = base64.b64decode(doc["keycheck"], validate=True)
            sealed = base64.b64decode(doc["settings"], validate=True)
        except (ValueError, KeyError, TypeError) as e:
            raise VaultCorrupt(f"vault config is not valid: {e}") from None
        try:
            ok = keys.open_sealed(keycheck, keycheck_aad(vault_id))
        except VaultCorrupt:
            ok = b""
        if ok != KEYCHECK_PLAINTEXT:
            raise WrongKey("wrong vault key", {"vault_id": vault_id})
        try:
            settings = json.loads(keys.open_sealed(sealed, config_aad(vault_id)))
            cfg = cls(vault_id=str(settings["vault_id"]),
                      block_size=int(settings["block_size"]),
                      pack_target_size=int(settings["pack_target_size"]),
                      created=str(settings["created"])[:64], version=version)
        except VaultCorrupt:
            raise VaultCorrupt("vault config failed authentication: it was changed "
                               "or damaged on storage", {"vault_id": vault_id}) from None
        except (ValueError, KeyError, TypeError) as e:
            raise VaultCorrupt(f"vault config is not valid: {e}",
                               {"vault_id": vault_id}) from None
        if cfg.vault_id != vault_id:
            raise VaultCorrupt("vault config names another vault",
                               {"vault_id": vault_id})
        if not valid_block_size(cfg.block_size) or not (
                0 < cfg.pack_target_size <= MAX_PACK_TARGET):
            raise VaultCorrupt("vault config has invalid sizes",
                               {"vault_id": vault_id})
        return cfg


# --- gc/pending ---------------------------------------------------------------------------

MAX_PENDING = 10_000_000


def encode_pending(pending: dict[str, float], keys: Sealer, vault_id: str) -> bytes:
    return keys.seal(json.dumps(pending, sort_keys=True).encode(), pending_aad(vault_id))


def decode_pending(blob: bytes, keys: Sealer, vault_id: str,
                   now: float) -> dict[str, float]:
    """GC's marks: pack id -> when first found unreferenced. VaultDataCorrupt when it
    fails authentication or holds values no GC wrote (not pack ids, times in the future
    or before 2020, too many)."""
    try:
        doc = json.loads(keys.open_sealed(blob, pending_aad(vault_id)))
        if not isinstance(doc, dict) or len(doc) > MAX_PENDING:
            raise ValueError("not a map of pack ids")
        out = {str(k): float(v) for k, v in doc.items()}
        if not all(is_pack_id(k) and 1.5e9 <= v <= now + 86400 for k, v in out.items()):
            raise ValueError("a pack id or time out of range")
    except VaultCorrupt:
        raise VaultCorrupt("gc/pending failed authentication") from None
    except (ValueError, TypeError) as e:
        raise VaultCorrupt(f"gc/pending is not valid: {e}") from None
    return out


# --- index ------------------------------------------------------------------------------

IndexEntry = tuple[bytes, int, int, bytes | None]  # chunk id, offset, length, base


def encode_index(entries: list[IndexEntry]) -> bytes:
    out = bytearray(_INDEX_MAGIC)
    for cid, off, length, base in entries:
        out += _INDEX_REC.pack(cid, off, length, base or _NO_BASE)
    return bytes(out)


def decode_index(data: bytes) -> list[IndexEntry]:
    body = memoryview(data)[len(_INDEX_MAGIC):]
    if data[:len(_INDEX_MAGIC)] != _INDEX_MAGIC or len(body) % _INDEX_REC.size:
        raise VaultCorrupt("index has an unknown layout")
    return [(cid, off, length, None if base == _NO_BASE else base)
            for cid, off, length, base in _INDEX_REC.iter_unpack(body)]


# --- manifest ---------------------------------------------------------------------------

def encode_manifest(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_manifest(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError("unknown manifest version")
        for d in doc["disks"].values():
            size, bs, blocks = int(d["size"]), int(d["block_size"]), d["blocks"]
            if not valid_block_size(bs) or size < 0 or len(blocks) != -(-size // bs):
                raise ValueError("block list does not match disk size")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise VaultCorrupt(f"manifest is not valid: {e}") from None
    return doc
