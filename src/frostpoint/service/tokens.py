"""Management API tokens and their roles.

A token is shown once, when it is made; the database keeps only its sha256, so a copy
of the database (or a backup of it) lets nobody call the API. The server's own token
in DATA/api-token is the admin token named FILE_TOKEN_NAME; it is re-registered at each
start, so rotating it is: delete the file, restart the server.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.models import ApiToken

# Each role can do what the roles before it can (see docs/security.md).
ROLES = ("reader", "operator", "admin")
FILE_TOKEN_NAME = "admin"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Caller:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def token_hash(token: str) -> str:
    """What is stored of an API or machine token: its sha256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _describe(t: ApiToken) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "created_at": t.created_at.isoformat() + "Z",
            "file": t.name == FILE_TOKEN_NAME}


class Tokens:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def register_file_token(self, token: str) -> None:
        """The token in DATA/api-token is the admin token (made anew if the file was)."""
        with self.sessions.begin() as s:
            row = s.scalars(select(ApiToken).where(ApiToken.name == FILE_TOKEN_NAME)).first()
            if row is None:
                s.add(ApiToken(name=FILE_TOKEN_NAME, role="admin",
                               token_hash=token_hash(token)))
            else:
                row.role, row.token_hash = "admin", token_hash(token)

    def authenticate(self, bearer: str) -> Caller | None:
        """The caller a bearer token names, or None. Never raises on odd input: an
        empty or non-ASCII token is simply no token (a 401, not a 500)."""
        if not bearer or not bearer.isascii():
            return None
        with self.sessions() as s:
            row = s.scalars(select(ApiToken).where(
                ApiToken.token_hash == token_hash(bearer))).first()
            return Caller(row.name, row.role) if row else None

    def create(self, name: str, role: str) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput", "a token name is 1-64 letters, digits, "
                                  "'.', '_' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise FrostpointError("InvalidInput", f"--role is one of {', '.join(ROLES)}")
        token = secrets.token_urlsafe(32)
        try:
            with self.sessions.begin() as s:
                row = ApiToken(name=name, role=role, token_hash=token_hash(token))
                s.add(row)
                s.flush()
                out = _describe(row)
        except IntegrityError:
            raise FrostpointError("Conflict", f"a token named {name} exists; "
                                  f"frostpoint token revoke {name} first") from None
        return {**out, "token": token}

    def list(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [_describe(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.name))]

    def revoke(self, name: str) -> dict[str, Any]:
        if name == FILE_TOKEN_NAME:
            raise FrostpointError("Conflict", "the admin token is the server's own "
                                  "(DATA/api-token); to replace it, delete that file and "
                                  "restart the server")
        with self.sessions.begin() as s:
            row = s.scalars(select(ApiToken).where(ApiToken.name == name)).first()
            if row is None:
                raise FrostpointError("NotFound", f"no token {name}; frostpoint token list")
            s.delete(row)
        return {"revoked": name}
