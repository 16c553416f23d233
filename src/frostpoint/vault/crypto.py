"""Vault keys: keyed chunk ids and authenticated encryption of everything stored.

One 32-byte master key per vault; HKDF-SHA256 derives independent subkeys so that the
id key (which decides dedup) and the encryption key never share material.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass

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
# Chunks: independent frames of 1 MiB, each "raw length, stored length, keyed digest of
# its plaintext, stored bytes" (zstd, or raw when zstd does not shrink it). The chunk id
# is computed from the frame digests, so a partly changed block decompresses and hashes
# only the frames that changed and copies the others (bytes and digest) as they are.
FLAG_FRAMES = 0x02
FRAME = 1024 * 1024
DIGEST_SIZE = 32
_FRAME_HEAD = struct.Struct("<II32s")  # raw length, stored length, frame digest


@dataclass(frozen=True)
class Frame:
    """One frame of an opened chunk, not decompressed."""

    raw_len: int
    digest: bytes
    encoded: memoryview  # head + stored bytes, as in the chunk: reusable as it is
    stored: memoryview   # zstd frame, or the plaintext when len(stored) == raw_len


_INFO_FRAME = b"frostpoint-vault v2 frame-key"
_INFO_ID = b"frostpoint-vault v2 id-key"
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
        # Two hash keys: frame digests and chunk ids can never be mistaken for each other.
        self.frame_key = _derive(bytes(master_key), _INFO_FRAME)
        self.id_key = _derive(bytes(master_key), _INFO_ID)
        self.enc_key = _derive(bytes(master_key), _INFO_ENC)
        self._aead = AESGCM(self.enc_key)
        # zstd contexts are not thread-safe; one per thread (cheap, reused).
        self._local = threading.local()
        self._zero_frames: dict[int, tuple[bytes, bytes]] = {}

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

    def frame_digest(self, raw: bytes | bytearray | memoryview) -> bytes:
        return blake3.blake3(raw, key=self.frame_key).digest()

    def frame_digests(self, plaintext: bytes | bytearray | memoryview) -> list[bytes]:
        """Keyed BLAKE3 of each 1 MiB frame of a block (the last one may be short)."""
        view = memoryview(plaintext)
        return [self.frame_digest(view[s:s + FRAME]) for s in range(0, len(view), FRAME)]

    def id_of_digests(self, digests: list[bytes]) -> bytes:
        """Chunk id from the frame digests: keyed BLAKE3 (another key) over them, in
        order. Equal data dedups, but ids reveal nothing without the key."""
        return blake3.blake3(b"".join(digests), key=self.id_key).digest()

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        return self.id_of_digests(self.frame_digests(plaintext))

    def zero_frame(self, n: int) -> tuple[bytes, bytes]:
        """(digest, encoded frame) of n zero bytes; cached, the same for every block."""
        hit = self._zero_frames.get(n)
        if hit is None:
            digest = self.frame_digest(bytes(n))
            hit = self._zero_frames[n] = (digest, self.encode_frame(bytes(n), digest))
        return hit

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce(12) || AES-256-GCM(flag(1) || payload) with tag; payload zstd'd if smaller."""
        # Random-looking data (media, encrypted files) does not shrink: a 64 KiB sample
        # tells, and saves compressing megabytes for nothing.
        compressed = self._cctx().compress(plaintext) if self._compressible(
            plaintext) else plaintext
        if len(compressed) < len(plaintext):
            body = bytes((FLAG_ZSTD,)) + compressed
        else:
            body = bytes((FLAG_RAW,)) + plaintext
        return self._seal_body(body, aad)

    def _compressible(self, plaintext: bytes | bytearray | memoryview) -> bool:
        sample = plaintext[:SAMPLE]
        return len(plaintext) <= 4 * SAMPLE or len(self._cctx().compress(sample)) <= (
            len(sample) * 0.98)

    def encode_frame(self, raw: bytes | bytearray | memoryview, digest: bytes,
                     compress: bool | None = None) -> bytes:
        """head || stored bytes of one frame. compress=None: tries zstd unless a sample
        says the frame does not shrink; False: stored raw."""
        if compress is None:
            compress = self._compressible(raw)
        c = self._cctx().compress(raw) if compress else None
        if c is not None and len(c) < len(raw):
            return _FRAME_HEAD.pack(len(raw), len(c), digest) + c
        return b"".join((_FRAME_HEAD.pack(len(raw), len(raw), digest), raw))  # one copy

    def seal_chunk(self, plaintext: bytes, digests: list[bytes], aad: bytes) -> bytes:
        """Seal a block read whole, with its frame digests: framed zstd, or all frames
        raw when a sample of the block does not compress (random data)."""
        compress = self._compressible(plaintext)
        view = memoryview(plaintext)
        return self.seal_frames([self.encode_frame(view[s:s + FRAME], d, compress)
                                 for s, d in zip(range(0, len(view), FRAME), digests,
                                                 strict=True)], aad)

    def seal_frames(self, encoded: list[bytes | bytearray | memoryview], aad: bytes) -> bytes:
        """Seal a chunk from its encoded frames (new, or reused from another chunk)."""
        return self._seal_body(b"".join([bytes((FLAG_FRAMES,)), *encoded]), aad)

    def _seal_body(self, body: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, body, aad)

    def open_frames(self, blob: bytes, aad: bytes) -> list[Frame]:
        """Decrypt a chunk and read its frame table; nothing is decompressed or hashed.
        Damage -> VaultDataCorrupt."""
        body = self._open_body(blob, aad)
        if body[0] != FLAG_FRAMES:
            raise FrostpointError("VaultDataCorrupt", f"chunk has seal flag {body[0]:#x}, "
                                  "not frames")
        view = memoryview(body)
        out: list[Frame] = []
        pos = 1
        try:
            while pos < len(view):
                raw_len, stored_len, digest = _FRAME_HEAD.unpack_from(view, pos)
                start = pos + _FRAME_HEAD.size
                end = start + stored_len
                if end > len(view) or raw_len > FRAME or stored_len > raw_len or (
                        raw_len == 0):
                    raise ValueError("frame overruns the chunk")
                out.append(Frame(raw_len, digest, view[pos:end], view[start:end]))
                pos = end
        except (struct.error, ValueError) as e:
            raise FrostpointError("VaultDataCorrupt", f"chunk frames are damaged: {e}") from None
        if not out:
            raise FrostpointError("VaultDataCorrupt", "chunk has no frames")
        return out

    def frame_plaintext(self, frame: Frame) -> bytes | memoryview:
        """Decompress one frame (not hashed; a raw frame is not copied). Damage ->
        VaultDataCorrupt."""
        if len(frame.stored) == frame.raw_len:
            return frame.stored
        try:
            plain = self._dctx().decompress(frame.stored, max_output_size=frame.raw_len)
        except zstandard.ZstdError as e:
            raise FrostpointError("VaultDataCorrupt", f"chunk frame does not decompress: {e}"
                                  ) from None
        if len(plain) != frame.raw_len:
            raise FrostpointError("VaultDataCorrupt", "chunk frame has the wrong length")
        return plain

    def open_chunk(self, blob: bytes, aad: bytes) -> tuple[list[bytes | memoryview], bytes]:
        """Decrypt, decompress and re-hash a whole chunk: (frame plaintexts, the chunk id
        they hash to). A frame whose digest in the table is not its plaintext's ->
        VaultDataCorrupt; the caller compares the id with the one it asked for."""
        plains: list[bytes | memoryview] = []
        digests: list[bytes] = []
        for k, f in enumerate(self.open_frames(blob, aad)):
            plain = self.frame_plaintext(f)
            digest = self.frame_digest(plain)
            if digest != f.digest:
                raise FrostpointError("VaultDataCorrupt",
                                      f"frame {k} of the chunk does not match its digest")
            plains.append(plain)
            digests.append(digest)
        return plains, self.id_of_digests(digests)

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
        if flag == FLAG_ZSTD:
            try:
                return self._dctx().decompress(payload, max_output_size=_MAX_PLAINTEXT)
            except zstandard.ZstdError as e:
                raise FrostpointError(
                    "VaultDataCorrupt", f"sealed object does not decompress: {e}") from None
        raise FrostpointError("VaultDataCorrupt", f"unknown seal flag {flag:#x}")

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of seal (chunks: open_chunk). Damage, wrong key or aad ->
        VaultDataCorrupt."""
        return self._decode(self._open_body(blob, aad))
