"""Vault keys: keyed chunk ids and authenticated encryption of everything stored.

One 32-byte master key per vault; HKDF-SHA256 derives independent subkeys so that the
id key (which decides dedup) and the encryption key never share material.
"""

from __future__ import annotations

import os
import struct
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
# Chunks: independent zstd frames of 1 MiB, each "raw length, stored length, bytes"
# (stored raw when zstd does not shrink it). A partly changed block recompresses only
# the frames that changed and copies the others from the previous chunk.
FLAG_FRAMES = 0x02
FRAME = 1024 * 1024
_FRAME_HEAD = struct.Struct("<II")

Frame = tuple[int, bytes, bytes]  # raw length, stored bytes, plaintext

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
        return self._seal_body(body, aad)

    def _compressible(self, plaintext: bytes) -> bool:
        sample = plaintext[:SAMPLE]
        return len(plaintext) <= 4 * SAMPLE or len(self._cctx().compress(sample)) <= (
            len(sample) * 0.98)

    def _frame(self, raw: bytes | bytearray) -> bytes:
        c = self._cctx().compress(raw)
        stored = c if len(c) < len(raw) else bytes(raw)
        return _FRAME_HEAD.pack(len(raw), len(stored)) + stored

    def seal_chunk(self, plaintext: bytes, aad: bytes,
                   reuse: dict[int, bytes] | None = None) -> bytes:
        """Seal a block: framed zstd (or raw when it does not compress).

        reuse maps a frame index to its already encoded frame (from the previous chunk)
        for frames whose bytes did not change."""
        if not self._compressible(plaintext):
            return self._seal_body(bytes((FLAG_RAW,)) + plaintext, aad)
        parts = [bytes((FLAG_FRAMES,))]
        for n, start in enumerate(range(0, len(plaintext), FRAME)):
            hit = reuse.get(n) if reuse else None
            parts.append(hit if hit is not None else self._frame(
                plaintext[start:start + FRAME]))
        body = b"".join(parts)
        if len(body) > len(plaintext):
            body = bytes((FLAG_RAW,)) + plaintext
        return self._seal_body(body, aad)

    def _seal_body(self, body: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, body, aad)

    def open_frames(self, blob: bytes, aad: bytes) -> list[bytes] | tuple[bytes, list[Frame]]:
        """Open a chunk keeping its frames: (plaintext, frames), or [plaintext] when the
        chunk is not framed. Damage -> VaultDataCorrupt."""
        body = self._open_body(blob, aad)
        if body[0] != FLAG_FRAMES:
            return [self._decode(body)]
        frames = self._frames(memoryview(body)[1:])
        return b"".join(f[2] for f in frames), frames

    def _frames(self, view: memoryview) -> list[Frame]:
        out: list[Frame] = []
        pos = 0
        try:
            while pos < len(view):
                raw_len, stored_len = _FRAME_HEAD.unpack_from(view, pos)
                end = pos + _FRAME_HEAD.size + stored_len
                stored = bytes(view[pos + _FRAME_HEAD.size:end])
                if len(stored) != stored_len or raw_len > FRAME:
                    raise ValueError("frame overruns the chunk")
                plain = stored if stored_len == raw_len else self._dctx().decompress(
                    stored, max_output_size=raw_len)
                if len(plain) != raw_len:
                    raise ValueError("frame has the wrong length")
                out.append((raw_len, bytes(view[pos:end]), plain))
                pos = end
        except (struct.error, ValueError, zstandard.ZstdError) as e:
            raise FrostpointError("VaultDataCorrupt", f"chunk frames are damaged: {e}") from None
        return out

    def _open_body(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE + 1:
            raise FrostpointError("VaultDataCorrupt", "sealed object is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise FrostpointError(
                "VaultDataCorrupt", "sealed object failed authentication") from None

    def _decode(self, body: bytes) -> bytes:
        flag, payload = body[0], body[1:]
        if flag == FLAG_RAW:
            return payload
        if flag == FLAG_FRAMES:
            return b"".join(f[2] for f in self._frames(memoryview(body)[1:]))
        if flag == FLAG_ZSTD:
            try:
                return self._dctx().decompress(payload, max_output_size=_MAX_PLAINTEXT)
            except zstandard.ZstdError as e:
                raise FrostpointError(
                    "VaultDataCorrupt", f"sealed object does not decompress: {e}") from None
        raise FrostpointError("VaultDataCorrupt", f"unknown seal flag {flag:#x}")

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of seal and seal_chunk. Damage, wrong key or aad -> VaultDataCorrupt."""
        return self._decode(self._open_body(blob, aad))
