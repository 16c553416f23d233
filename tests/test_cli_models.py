"""The CLI parses every answer with the model its route declares (schemas.RESPONSES),
and that table is the one service/api.py declares, route by route."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from frostpoint import schemas

API = Path(__file__).resolve().parent.parent / "src" / "frostpoint" / "service" / "api.py"
# Routes that api.py adds from a module of their own (add_routes).
API_PARTS = [API, API.with_name("api_recovery.py"), API.with_name("api_ops.py")]


def declared_routes() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the response_model expression of each route in api.py."""
    out = {}
    for node in (n for part in API_PARTS for n in ast.walk(ast.parse(part.read_text()))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for d in node.decorator_list:
            if (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                    and isinstance(d.func.value, ast.Name) and d.func.value.id == "app"
                    and d.func.attr in ("get", "post", "put", "patch", "delete")):
                model = next((ast.unparse(k.value) for k in d.keywords
                              if k.arg == "response_model"), None)
                if model is None:  # /metrics: Prometheus text, no JSON model
                    continue
                out[(d.func.attr.upper(), d.args[0].value)] = model.replace("S.", "")
    return out


def test_the_cli_knows_the_model_of_every_route_the_api_declares() -> None:
    declared = declared_routes()
    assert len(declared) >= 50, "api.py's routes were not found"
    known = {k: (f"list[{v.__args__[0].__name__}]" if getattr(v, "__args__", None)
                 else v.__name__) for k, v in schemas.RESPONSES.items()}
    assert known == declared


def test_a_path_finds_its_route_literal_segments_first() -> None:
    r = schemas.response_model
    assert r("POST", "/vaults/import") is schemas.VaultImported
    assert r("DELETE", "/vaults/import") is schemas.VaultDeleted  # a vault named import
    assert r("GET", "/jobs/abc?x=1") is schemas.Job
    assert r("GET", "/jobs") == list[schemas.Job]
    assert r("GET", "/no/such/route") is None


class _Odd(BaseHTTPRequestHandler):
    """A server that answers a job without its fields (another version, a proxy)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"id": "abc", "status": "Sleeping"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def odd_server() -> Iterator[str]:
    srv = HTTPServer(("127.0.0.1", 0), _Odd)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_answer_that_does_not_fit_is_one_clear_error(odd_server: str) -> None:
    env = {**os.environ, "FROSTPOINT_URL": odd_server, "FROSTPOINT_TOKEN": "t" * 40}
    for args in (["job", "show", "abc"], ["job", "show", "abc", "--json"]):
        p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", *args], env=env,
                           capture_output=True, text=True, timeout=60)
        out = p.stdout + p.stderr
        assert p.returncode == 1, out
        assert "does not fit this CLI's model" in out and "GET /jobs/abc" in out, out
        assert "Traceback" not in out
