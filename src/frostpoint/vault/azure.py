"""A vault in an Azure Blob Storage container (docs/vault-format.md, "Azure Blob layout").

Each vault object is one block blob named `<prefix>/<object name>`; each Backend method maps to
one native operation. A blob upload is atomic (a single Put Blob, or staged blocks that
become visible all at once with Put Block List), so readers see the old or the new
blob, never part of one; Azure acknowledges a write only once it is durably stored.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from frostpoint.vault.backend import Backend, _check_name

DEFAULT_CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

# Packs are ~32 MiB: upload them as 8 MiB blocks, 4 at a time (each block retried on
# its own); metadata objects (index, manifest, config) go up in one request.
MAX_CONCURRENCY = 4
MAX_SINGLE_PUT = 8 * 1024 * 1024
BLOCK_SIZE = 8 * 1024 * 1024
CONNECTION_TIMEOUT_S = 20
READ_TIMEOUT_S = 120      # per socket read; a slow 8 MiB block must still fit
SERVER_TIMEOUT_S = 300    # per operation, enforced by the service

_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")  # Azure's naming rules


class AzureBlobBackend(Backend):
    """Vault objects as block blobs in one container, under an optional name prefix.

    Several vaults can share a container with different prefixes. The container is
    created if missing. Transient errors are retried by the SDK's retry policy
    (exponential, 3 retries by default; pass retry_total=... etc. through **client_kwargs).
    """

    def __init__(self, connection_string: str, container: str, prefix: str = "", *,
                 max_concurrency: int = MAX_CONCURRENCY, **client_kwargs: Any) -> None:
        if not _CONTAINER_RE.match(container):
            raise ValueError(f"invalid Azure container name {container!r}: 3-63 of a-z 0-9 "
                             "and single hyphens, starting and ending with a letter or digit")
        prefix = prefix.strip("/")
        if prefix:
            _check_name(prefix)
        self.container = container
        self.prefix = prefix
        self._root = f"{prefix}/" if prefix else ""
        self._concurrency = max_concurrency
        self._timeout = SERVER_TIMEOUT_S
        opts: dict[str, Any] = {
            "connection_timeout": CONNECTION_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "max_single_put_size": MAX_SINGLE_PUT,
            "max_block_size": BLOCK_SIZE,
            **client_kwargs,
        }
        self._service = BlobServiceClient.from_connection_string(connection_string, **opts)
        self._container = self._service.get_container_client(container)
        try:
            self._container.create_container(timeout=self._timeout)
        except ResourceExistsError:
            pass

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AzureBlobBackend:
        """`azure://CONTAINER[/PREFIX][?connection_string_env=VAR]`.

        The connection string is read from the environment variable VAR (default
        AZURE_STORAGE_CONNECTION_STRING), so no secret is ever part of a location.
        """
        parts = urlsplit(url)
        if parts.scheme != "azure" or not parts.netloc:
            raise ValueError(f"not an Azure vault location {url!r}: use "
                             "azure://CONTAINER[/PREFIX][?connection_string_env=VAR]")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"connection_string_env"}
        if unknown or parts.fragment:
            raise ValueError(f"Azure vault location {url!r}: unknown option(s) "
                             f"{sorted(unknown) or ['#' + parts.fragment]}")
        var = query.get("connection_string_env", [DEFAULT_CONNECTION_STRING_ENV])[-1]
        conn = os.environ.get(var)
        if not conn:
            raise ValueError(f"Azure vault location {url!r}: environment variable {var} "
                             "with the storage connection string is not set")
        return cls(conn, parts.netloc, parts.path, **kwargs)

    def _blob(self, name: str) -> Any:
        _check_name(name)
        return self._container.get_blob_client(self._root + name)

    def put(self, name: str, data: bytes) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)  # the SDK's chunker reads bytes, not a bytearray
        self._blob(name).upload_blob(data, overwrite=True, length=len(data),
                                     max_concurrency=self._concurrency,
                                     timeout=self._timeout)

    def get(self, name: str) -> bytes:
        try:
            return bytes(self._blob(name).download_blob(
                max_concurrency=self._concurrency, timeout=self._timeout).readall())
        except ResourceNotFoundError:
            raise FileNotFoundError(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        blob = self._blob(name)
        try:
            if length == 0:
                blob.get_blob_properties(timeout=self._timeout)
                return b""
            return bytes(blob.download_blob(offset, length, max_concurrency=self._concurrency,
                                            timeout=self._timeout).readall())
        except ResourceNotFoundError:
            raise FileNotFoundError(name) from None
        except HttpResponseError as e:
            if e.status_code == 416:  # offset at or past the end: short read, as pread
                return b""
            raise

    def list(self, prefix: str) -> list[str]:
        n = len(self._root)
        names = (b[n:] for b in self._container.list_blob_names(
            name_starts_with=self._root + prefix, timeout=self._timeout))
        # Hidden names are never vault objects (the Backend contract; see LocalBackend).
        return sorted(b for b in names if not any(p.startswith(".") for p in b.split("/")))

    def delete(self, name: str) -> None:
        try:
            self._blob(name).delete_blob(delete_snapshots="include", timeout=self._timeout)
        except ResourceNotFoundError:
            pass

    def exists(self, name: str) -> bool:
        return bool(self._blob(name).exists(timeout=self._timeout))

    def close(self) -> None:
        self._service.close()

    def __repr__(self) -> str:
        where = f"{self.container}/{self.prefix}" if self.prefix else self.container
        return f"AzureBlobBackend('azure://{where}', account={self._service.account_name!r})"
