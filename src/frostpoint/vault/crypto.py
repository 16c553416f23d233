"""Vault keys: keyed chunk ids and authenticated encryption of everything stored.

One 32-byte master key per vault; HKDF-SHA256 derives independent subkeys so that the
id key (which decides dedup) and the encryption key never share material.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from typing import NamedTuple

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from frostpoint.vault.errors import InvalidRequest, VaultCorrupt
from frostpoint.vault.format import chunk_data_aad, chunk_table_aad

MASTER_KEY_SIZE = 32
SAMPLE = 64 * 1024
NONCE_SIZE = 12
TAG_SIZE = 16
# zstd's fast end: on 256 KiB frames of the benchmark's data it stores within 1 % of
# level 3 for about a fifth less CPU (docs/benchmarks.md). Readers do not depend on it.
ZSTD_LEVEL = 1

# Flag byte, first byte of the plaintext inside the AEAD (so it is authenticated and
# does not leak compressibility in clear). Used by index, manifest and key check.
FLAG_RAW = 0x00
FLAG_ZSTD = 0x01
# Chunks (docs/vault-format.md): independent frames of 256 KiB, each with the keyed
# digest of its plaintext; the chunk id is computed from the digests. A chunk is a
# sealed frame table and sealed frame data. A frame is stored in the chunk, or is
# frame k of a base chunk: an incremental stores only the frames a change touches and
# names the rest, so it reads only the previous chunk's table and writes only new
# frames. Bases never have bases (one hop at most).
FRAME = 256 * 1024
CHUNK_KIND = 0x03
INLINE, IN_BASE = 0, 1
NO_BASE = bytes(32)
_CHUNK_HEAD = struct.Struct("<I")          # sealed table length (clear; checked by AEAD)
_TABLE_HEAD = struct.Struct("<B32s")       # kind, base chunk id (zeros: no base)
_TABLE_FRAME = struct.Struct("<II32sB")    # raw length, stored length, digest, where


def frames_of(block_len: int) -> int:
    return -(-block_len // FRAME)


def frame_spans(n: int) -> list[tuple[int, int]]:
    """(start, end) of each frame of an n-byte block, relative to the block."""
    return [(s, min(n, s + FRAME)) for s in range(0, n, FRAME)]


def table_read_size(block_len: int) -> int:
    """Bytes at the start of a chunk of block_len bytes that hold its sealed table."""
    return (_CHUNK_HEAD.size + NONCE_SIZE + TAG_SIZE + _TABLE_HEAD.size
            + frames_of(block_len) * _TABLE_FRAME.size)


@dataclass(frozen=True)
class Frame:
    """One frame of a chunk, not decompressed. stored is None for a frame kept in the
    base chunk (same position)."""

    raw_len: int
    digest: bytes
    stored: bytes | bytearray | memoryview | None  # zstd frame, or raw when as long

    @property
    def compressed(self) -> bool:
        return self.stored is not None and len(self.stored) < self.raw_len


class TableRow(NamedTuple):
    raw_len: int
    stored_len: int
    digest: bytes
    where: int  # INLINE or IN_BASE


@dataclass(frozen=True)
class Chunk:
    """An opened chunk: its base chunk id (None: all frames stored here), its frames."""

    base: bytes | None
    frames: list[Frame]

    @property
    def digests(self) -> list[bytes]:
        return [f.digest for f in self.frames]


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
            raise InvalidRequest("vault master key must be 32 bytes")
        # Two hash keys: frame digests and chunk ids can never be mistaken for each other.
        self.frame_key = _derive(bytes(master_key), _INFO_FRAME)
        self.id_key = _derive(bytes(master_key), _INFO_ID)
        self.enc_key = _derive(bytes(master_key), _INFO_ENC)
        self._aead = AESGCM(self.enc_key)
        # zstd contexts are not thread-safe; one per thread (cheap, reused).
        self._local = threading.local()
        self._zero_frames: dict[int, Frame] = {}

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
        """Keyed BLAKE3 of each FRAME-byte frame of a block (the last one may be short)."""
        view = memoryview(plaintext)
        return [self.frame_digest(view[a:b]) for a, b in frame_spans(len(view))]

    def id_of_digests(self, digests: list[bytes]) -> bytes:
        """Chunk id from the frame digests: keyed BLAKE3 (another key) over them, in
        order. Equal data dedups, but ids reveal nothing without the key."""
        return blake3.blake3(b"".join(digests), key=self.id_key).digest()

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        return self.id_of_digests(self.frame_digests(plaintext))

    def zero_frame(self, n: int) -> Frame:
        """A frame of n zero bytes (digest, compressed); cached, the same everywhere."""
        hit = self._zero_frames.get(n)
        if hit is None:
            hit = self._zero_frames[n] = self.encode_frame(bytes(n), self.frame_digest(bytes(n)))
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
        return len(plaintext) <= SAMPLE or len(self._cctx().compress(sample)) <= (
            len(sample) * 0.98)

    def encode_frame(self, raw: bytes | bytearray | memoryview, digest: bytes,
                     compress: bool | None = None) -> Frame:
        """One frame, stored in its chunk. compress=None: tries zstd unless a sample
        says the frame does not shrink; False: stored raw."""
        if compress is None:
            compress = self._compressible(raw)
        c = self._cctx().compress(raw) if compress else None
        if c is not None and len(c) < len(raw):
            return Frame(len(raw), digest, c)
        return Frame(len(raw), digest, raw)

    def encode_block(self, plaintext: bytes, digests: list[bytes]) -> list[Frame]:
        """The frames of a block read whole: zstd, or all raw when a sample of the
        block does not compress (random data)."""
        compress = self._compressible(plaintext)
        view = memoryview(plaintext)
        return [self.encode_frame(view[a:b], d, compress)
                for (a, b), d in zip(frame_spans(len(view)), digests, strict=True)]

    def seal_chunk(self, cid: bytes, frames: list[Frame], base: bytes | None = None) -> bytes:
        """u32 table length || sealed table || sealed data of the stored frames."""
        if all(f.stored is None for f in frames):
            raise ValueError("a chunk stores at least one frame (else it is its base)")
        table = bytearray(_TABLE_HEAD.pack(CHUNK_KIND, base or NO_BASE))
        for f in frames:
            if f.stored is None and base is None:
                raise ValueError("a frame kept in a base needs a base")
            table += _TABLE_FRAME.pack(f.raw_len, 0 if f.stored is None else len(f.stored),
                                       f.digest, IN_BASE if f.stored is None else INLINE)
        sealed_table = self._seal_body(bytes(table), chunk_table_aad(cid))
        data = b"".join([f.stored for f in frames if f.stored is not None])
        return b"".join((_CHUNK_HEAD.pack(len(sealed_table)), sealed_table,
                         self._seal_body(data, chunk_data_aad(cid))))

    def _seal_body(self, body: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, body, aad)

    def open_table(self, head: bytes | memoryview, cid: bytes
                   ) -> tuple[bytes | None, list[TableRow], int]:
        """The frame table at the start of a sealed chunk: (base chunk id or None, its
        rows, where the sealed data starts). Reads nothing past the table, so an
        incremental can fetch just table_read_size bytes. Damage -> VaultDataCorrupt."""
        try:
            (n,) = _CHUNK_HEAD.unpack_from(head, 0)
        except struct.error:
            raise VaultCorrupt("chunk is truncated") from None
        end = _CHUNK_HEAD.size + n
        if end > len(head):
            raise VaultCorrupt("chunk table is truncated")
        table = self._open_body(bytes(head[_CHUNK_HEAD.size:end]), chunk_table_aad(cid))
        try:
            kind, base = _TABLE_HEAD.unpack_from(table, 0)
            rows = [TableRow(*r) for r in
                    _TABLE_FRAME.iter_unpack(memoryview(table)[_TABLE_HEAD.size:])]
            if kind != CHUNK_KIND or not rows:
                raise ValueError(f"kind {kind:#x} with {len(rows)} frames")
            for r in rows:
                if not 0 < r.raw_len <= FRAME or r.stored_len > r.raw_len or (
                        (r.where == INLINE) != (r.stored_len > 0)) or r.where not in (
                        INLINE, IN_BASE) or (r.where == IN_BASE and base == NO_BASE):
                    raise ValueError("a frame entry is out of range")
        except (struct.error, ValueError) as e:
            raise VaultCorrupt(f"chunk table is damaged: {e}") from None
        return (None if base == NO_BASE else base), rows, end

    def open_chunk(self, blob: bytes | memoryview, cid: bytes) -> Chunk:
        """Decrypt a whole chunk (table and data); nothing is decompressed or hashed."""
        base, rows, start = self.open_table(blob, cid)
        data = memoryview(self._open_body(bytes(blob[start:]), chunk_data_aad(cid)))
        frames: list[Frame] = []
        pos = 0
        for r in rows:
            if r.where == IN_BASE:
                frames.append(Frame(r.raw_len, r.digest, None))
                continue
            frames.append(Frame(r.raw_len, r.digest, data[pos:pos + r.stored_len]))
            pos += r.stored_len
        if pos != len(data):
            raise VaultCorrupt("chunk data does not match its table")
        return Chunk(base, frames)

    def frame_plaintext(self, frame: Frame) -> bytes | memoryview:
        """Decompress one stored frame (not hashed; a raw frame is not copied). Damage
        -> VaultDataCorrupt."""
        assert frame.stored is not None
        if len(frame.stored) == frame.raw_len:
            stored = frame.stored  # a bytearray is lent as a view, not copied
            return memoryview(stored) if isinstance(stored, bytearray) else stored
        try:
            plain = self._dctx().decompress(frame.stored, max_output_size=frame.raw_len)
        except zstandard.ZstdError as e:
            raise VaultCorrupt(f"chunk frame does not decompress: {e}") from None
        if len(plain) != frame.raw_len:
            raise VaultCorrupt("chunk frame has the wrong length")
        return plain

    def _open_body(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE + 1:
            raise VaultCorrupt("sealed object is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise VaultCorrupt("sealed object failed authentication") from None

    def _decode(self, body: bytes) -> bytes:
        flag, payload = body[0], body[1:]
        if flag == FLAG_RAW:
            return payload
        if flag == FLAG_ZSTD:
            try:
                return self._dctx().decompress(payload, max_output_size=_MAX_PLAINTEXT)
            except zstandard.ZstdError as e:
                raise VaultCorrupt(f"sealed object does not decompress: {e}") from None
        raise VaultCorrupt(f"unknown seal flag {flag:#x}")

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of seal (chunks: open_chunk). Damage, wrong key or aad ->
        VaultDataCorrupt."""
        return self._decode(self._open_body(blob, aad))
