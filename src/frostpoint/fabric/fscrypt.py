"""Encrypted disks: ext4 with the kernel's filesystem encryption (fscrypt, policy v2).

ext4 cannot encrypt its root directory, so an encrypted disk keeps everything in one
encrypted directory, `volume/`, which the machine sees as the disk's mount point. The
disk's 64-byte data key is added to the filesystem's keyring each time it is mounted;
without it the image holds only ciphertext (names included).

Run inside a machine's mount namespace as
`python -m frostpoint.fabric.fscrypt unlock MOUNT` with the key as hex on stdin.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
from pathlib import Path

KEY_BYTES = 64
VOLUME = "volume"
# <linux/fscrypt.h>: _IOWR('f', 23, struct fscrypt_add_key_arg) and
# _IOR('f', 19, struct fscrypt_policy_v1) (v2 policies use the same number).
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_GET_ENCRYPTION_POLICY_EX = 0xC0096616
KEY_SPEC_TYPE_IDENTIFIER = 2
POLICY_V2, AES_256_XTS, AES_256_CTS, PAD_16 = 2, 1, 4, 0x02


def _ioctl(path: str | Path, request: int, arg: bytearray | bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(arg)
        fcntl.ioctl(fd, request, buf)
        return bytes(buf)
    finally:
        os.close(fd)


def add_key(mount: str | Path, key: bytes) -> bytes:
    """Add the key to the filesystem's keyring; returns its 16-byte identifier."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"an encryption key is {KEY_BYTES} bytes")
    arg = struct.pack("II32sII32x", KEY_SPEC_TYPE_IDENTIFIER, 0, b"", len(key), 0) + key
    return _ioctl(mount, FS_IOC_ADD_ENCRYPTION_KEY, arg)[8:24]


def policy_identifier(directory: str | Path) -> bytes | None:
    """The key identifier of a directory's v2 policy, or None if it is not encrypted."""
    arg = struct.pack("Q24x", 24)  # policy_size, then room for a v2 policy
    try:
        out = _ioctl(directory, FS_IOC_GET_ENCRYPTION_POLICY_EX, arg)
    except OSError:
        return None
    return out[8 + 8:8 + 24] if out[8] == POLICY_V2 else None


def unlock(mount: str | Path, key: bytes) -> Path:
    """Unlock the disk mounted at mount (making its encrypted volume on first use)."""
    ident = add_key(mount, key)
    volume = Path(mount) / VOLUME
    if not volume.exists():
        volume.mkdir(mode=0o755)
        policy = struct.pack("BBBB4x16s", POLICY_V2, AES_256_XTS, AES_256_CTS, PAD_16, ident)
        _ioctl(volume, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    elif policy_identifier(volume) != ident:
        raise PermissionError(f"{volume} is encrypted with another key")
    return volume


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "unlock":
        print("usage: python -m frostpoint.fabric.fscrypt unlock MOUNT  (key hex on stdin)",
              file=sys.stderr)
        sys.exit(2)
    try:
        print(unlock(sys.argv[2], bytes.fromhex(sys.stdin.read().strip())))
    except (OSError, ValueError) as e:
        print(f"cannot unlock {sys.argv[2]}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
