"""An in-memory Backend: the Backend contract (vault/backend.py) over a dict.

Same semantics as LocalBackend and AzureBlobBackend, checked by one contract suite
(tests/test_backend_contract.py): names are checked alike (ValueError), put replaces
atomically, get/get_range raise FileNotFoundError for a missing object, get_range is
short at the end and refuses negatives, list is a sorted plain-string prefix match that
never shows hidden names, delete is idempotent, a "directory" is no object. Nothing is
durable: it lives as long as the object. For tests, and for tools that want a scratch
vault.
"""

from __future__ import annotations

import threading

from frostpoint.vault.backend import Backend, _check_name


class MemoryBackend(Backend):
    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()  # one put is all or nothing for every reader

    def put(self, name: str, data: bytes) -> None:
        _check_name(name)
        copy = bytes(data)  # the caller may reuse its buffer (the pack writer does)
        with self._lock:
            self._objects[name] = copy

    def get(self, name: str) -> bytes:
        _check_name(name)
        with self._lock:
            try:
                return self._objects[name]
            except KeyError:
                raise FileNotFoundError(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return self.get(name)[offset:offset + length]

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            names = [n for n in self._objects if n.startswith(prefix)]
        # Hidden names are never vault objects (only put_hidden can make one here).
        return sorted(n for n in names if not any(p.startswith(".") for p in n.split("/")))

    def delete(self, name: str) -> None:
        _check_name(name)
        with self._lock:
            self._objects.pop(name, None)

    def exists(self, name: str) -> bool:
        _check_name(name)
        with self._lock:
            return name in self._objects

    def put_hidden(self, name: str, data: bytes) -> None:
        """Store under a name put refuses (a hidden one), as a crashed writer or another
        tool leaves on real storage: for the contract test that list ignores them."""
        with self._lock:
            self._objects[name] = bytes(data)

    def __repr__(self) -> str:
        return f"MemoryBackend(<{len(self._objects)} objects>)"
