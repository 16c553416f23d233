"""Vault keys: keyed chunk ids and authenticated encryption of everything stored.

One 32-byte master key per vault; HKDF-SHA256 derives independent subkeys so that the
id key (which decides dedup) and the encryption key never share material.
"""

from __future__ import annotations

import os
import threading

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from frostpoint.errors.catalog import FrostpointError

MASTER_KEY_SIZE = 32
SAMPLE = 64 * 1024
NONCE_SIZE = 12
TAG_SIZE = 16
ZSTD_LEVEL = 3

# Flag byte, first byte of the plaintext inside the AEAD (so it is authenticated and
# does not leak compressibility in clear).
FLAG_RAW = 0x00
FLAG_ZSTD = 0x01

_INFO_ID = b"frostpoint-vault v1 id-key"
_INFO_ENC = b"frostpoint-vault v1 enc-key"

# Upper bound for one decompressed object; guards against a damaged length header.
_MAX_PLAINTEXT = 1 << 31


def _derive(master_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_key)


class VaultKeys:
    """Subkeys of one vault. Thread-safe: all methods may be called from a pool."""

    def __init__(self, master_key: bytes) -> None:
        if not isinstance(master_key, bytes | bytearray) or len(master_key) != MASTER_KEY_SIZE:
            raise FrostpointError("InvalidInput", "vault master key must be 32 bytes")
        self.id_key = _derive(bytes(master_key), _INFO_ID)
        self.enc_key = _derive(bytes(master_key), _INFO_ENC)
        self._aead = AESGCM(self.enc_key)
        # zstd contexts are not thread-safe; one per thread (cheap, reused).
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "cctx", None)
        if c is None:
            c = self._local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return c

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "dctx", None)
        if d is None:
            d = self._local.dctx = zstandard.ZstdDecompressor()
        return d

    def chunk_id(self, plaintext: bytes) -> bytes:
        """Keyed BLAKE3: equal data dedups, but ids reveal nothing without the key."""
        return blake3.blake3(plaintext, key=self.id_key).digest()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce(12) || AES-256-GCM(flag(1) || payload) with tag; payload zstd'd if smaller."""
        # Random-looking data (media, encrypted files) does not shrink: a 64 KiB sample
        # tells, and saves compressing megabytes for nothing.
        sample = plaintext[:SAMPLE]
        if len(plaintext) > 4 * SAMPLE and len(self._cctx().compress(sample)) > (
                len(sample) * 0.98):
            compressed = plaintext
        else:
            compressed = self._cctx().compress(plaintext)
        if len(compressed) < len(plaintext):
            body = bytes((FLAG_ZSTD,)) + compressed
        else:
            body = bytes((FLAG_RAW,)) + plaintext
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, body, aad)

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of seal. Any damage, wrong key or wrong aad -> VaultDataCorrupt."""
        if len(blob) < NONCE_SIZE + TAG_SIZE + 1:
            raise FrostpointError("VaultDataCorrupt", "sealed object is truncated")
        try:
            body = self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise FrostpointError(
                "VaultDataCorrupt", "sealed object failed authentication") from None
        flag, payload = body[0], body[1:]
        if flag == FLAG_RAW:
            return payload
        if flag == FLAG_ZSTD:
            try:
                return self._dctx().decompress(payload, max_output_size=_MAX_PLAINTEXT)
            except zstandard.ZstdError as e:
                # Authenticated but undecodable: written by a broken writer.
                raise FrostpointError(
                    "VaultDataCorrupt", f"sealed object does not decompress: {e}") from None
        raise FrostpointError("VaultDataCorrupt", f"unknown seal flag {flag:#x}")
