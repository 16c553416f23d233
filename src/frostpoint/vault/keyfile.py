"""A vault key exported under a passphrase (`frostpoint vault key export`), so that an
off-site vault can be restored after the host that held DATA/keys is lost.

The file is JSON: the vault's ids in clear, the 32-byte key sealed with AES-256-GCM under
a key stretched from the passphrase by scrypt (RFC 7914). Everything in clear is the
AAD, so no field can be changed without the passphrase (docs/vault-format.md).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from frostpoint.vault.crypto import MASTER_KEY_SIZE
from frostpoint.vault.errors import InvalidRequest, KeyFileInvalid

FORMAT = "frostpoint-vault-key"
VERSION = 1
# scrypt N=2^17, r=8, p=1: 128 MiB and about half a second, the usual interactive
# choice; what a reader accepts is bounded so a hostile file cannot ask for gigabytes.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 17, 8, 1
MAX_N, MAX_R, MAX_P = 1 << 20, 16, 4
MIN_PASSPHRASE = 8
MAX_FILE = 64 * 1024


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _stretch(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def _aad(head: dict[str, Any]) -> bytes:
    return json.dumps(head, sort_keys=True, separators=(",", ":")).encode()


def export_key(key: bytes, passphrase: str, ids: dict[str, str]) -> dict[str, Any]:
    """The key file's content. ids: names and ids to keep beside the key (clear)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidRequest(f"the passphrase needs at least "
                             f"{MIN_PASSPHRASE} characters")
    salt, nonce = os.urandom(16), os.urandom(12)
    head = {"format": FORMAT, "version": VERSION, **ids,
            "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                    "salt": _b64(salt)}}
    wrap = _stretch(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = AESGCM(wrap).encrypt(nonce, key, _aad(head))
    return {**head, "nonce": _b64(nonce), "sealed_key": _b64(sealed)}


def import_key(doc: Any, passphrase: str) -> tuple[bytes, dict[str, Any]]:
    """(the key, the file's clear fields). A wrong passphrase or a changed file:
    VaultKeyInvalid; not a key file: InvalidInput."""
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a frostpoint vault key file")
        if doc.get("version") != VERSION:
            raise ValueError(f"key file version {doc.get('version')!r} is not supported")
        if len(json.dumps(doc)) > MAX_FILE:
            raise ValueError("too large")
        head = {k: v for k, v in doc.items() if k not in ("nonce", "sealed_key")}
        kdf = head["kdf"]
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if kdf.get("name") != "scrypt" or not (
                2 <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
            raise ValueError("unsupported key derivation parameters")
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(doc["nonce"], validate=True)
        sealed = base64.b64decode(doc["sealed_key"], validate=True)
        if len(nonce) != 12 or not 8 <= len(salt) <= 64:
            raise ValueError("bad nonce or salt")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidRequest(f"key file is not valid: {e}") from None
    try:
        key = AESGCM(_stretch(passphrase, salt, n, r, p)).decrypt(nonce, sealed, _aad(head))
    except InvalidTag:
        raise KeyFileInvalid("the key file does not open: wrong "
                             "passphrase, or the file was changed") from None
    if len(key) != MASTER_KEY_SIZE:
        raise KeyFileInvalid("the key file holds no vault key")
    return key, head
