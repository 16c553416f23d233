"""The CLI's REST client: finds the service and its token, turns errors into output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from frostpoint.defaults import DEFAULT_DATA_DIR, DEFAULT_LISTEN
from frostpoint.errors.catalog import error_dict

console = Console()
err_console = Console(stderr=True)
FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")


def data_dir() -> Path:
    return Path(os.environ.get("FROSTPOINT_DATA_DIR", str(DEFAULT_DATA_DIR)))


def service_url() -> str:
    return os.environ.get("FROSTPOINT_URL", f"http://{DEFAULT_LISTEN}")


class ApiError(Exception):
    def __init__(self, error: dict[str, Any], status: int) -> None:
        super().__init__(error.get("message", ""))
        self.error = error
        self.status = status


def parsed(method: str, path: str, body: Any, status: int) -> Any:
    """The answer, parsed with the model its route declares (schemas.RESPONSES): a body
    that does not fit (another version of the service, a proxy's page) is one clear
    error here, not a KeyError deep in the printing. The CLI goes on with the JSON."""
    from pydantic import ValidationError

    from frostpoint.schemas import parse, response_model

    model = response_model(method, path)
    if model is None:
        return body
    try:
        parse(model, body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the body"
        raise ApiError(error_dict(
            "BackUpOperationFailed",
            f"the answer to {method} {path} does not fit this CLI's model ({e.error_count()} "
            f"problems; first: {where}: {first['msg']}); is the service another version?",
            {"route": f"{method} {path}"}), status) from None
    return body


class Client:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = url or service_url()
        token = token or os.environ.get("FROSTPOINT_TOKEN")
        # Why there is no token, said once the service refuses us (a missing token
        # file is normal before the first start, and for GET /health).
        self.token_problem: str | None = None
        if token is None:
            path = data_dir() / "api-token"
            try:
                token = path.read_text().strip()
            except FileNotFoundError:
                token, self.token_problem = "", f"the token file {path} does not exist"
            except (OSError, UnicodeError) as e:
                token = ""
                self.token_problem = f"the token file {path} cannot be read ({e})"
            if not token and self.token_problem is None:
                self.token_problem = f"the token file {path} is empty"
        # No header at all rather than a bare "Bearer ": the service answers
        # Unauthorized either way, and an empty credential is no credential.
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, timeout=600, headers=headers)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError as e:
            raise ApiError({"code": "Unavailable",
                            "message": f"no Frostpoint service at {self.url} ({e})",
                            "actions": ["frostpoint server &", "export FROSTPOINT_URL=..."]},
                           0) from None
        except httpx.HTTPError as e:  # a timeout, a dropped connection: no traceback
            raise ApiError({"code": "Unavailable",
                            "message": f"the request to {self.url}{path} failed: "
                                       f"{type(e).__name__}: {e}",
                            "actions": ["frostpoint doctor", "export FROSTPOINT_URL=..."]},
                           0) from None
        try:
            body = r.json() if r.content else {}
        except ValueError:
            body = {"error": {"code": "BackUpOperationFailed",
                              "message": f"HTTP {r.status_code}: {r.text[:500]}"}}
        if r.status_code == 401 and self.token_problem:
            raise ApiError(error_dict(
                "Unauthorized", f"no API token: {self.token_problem}",
                {"data_dir": str(data_dir())}), 401)
        if r.status_code >= 400:
            raise ApiError(body.get("error", {"code": f"HTTP{r.status_code}",
                                              "message": r.text[:500]}), r.status_code)
        return parsed(method, path, body, r.status_code)

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, json=body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("PATCH", path, json=body, **kw)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def wait_job(self, job_id: str, show: bool = True, label: str = "") -> dict[str, Any]:
        """Poll a job to its end, with a progress bar over the bytes it moves."""
        if not show:
            while True:  # a long poll: answered as the job ends
                job: dict[str, Any] = self.get(f"/jobs/{job_id}", params={"wait": 25})
                if job["status"] in FINAL:
                    return job
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.fields[amount]}"), TimeElapsedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task(label or job_id, total=None, amount="")
            while True:
                # Held up to a second: the bar moves, and the end is seen at once.
                job = self.get(f"/jobs/{job_id}", params={"wait": 1})  # typed above
                current = next((t for t in job["subtasks"] if t["status"] == "InProgress"),
                               None)
                if current:
                    p = current.get("progress", {})
                    # Backups and restores count bytes; vault verify and GC count steps.
                    counted = "bytes_total" not in p and "total" in p
                    bar.update(task, description=f"{label} {current['name']}",
                               completed=p.get("done" if counted else "bytes_done", 0),
                               total=p.get("total" if counted else "bytes_total") or None,
                               amount=_amount(p, counted))
                if job["status"] in FINAL:
                    return job


def _amount(p: dict[str, Any], counted: bool) -> str:
    """'3/10' for a count of steps, '1.2/4.0 GB' for bytes."""
    if counted:
        return f"{p.get('done', 0)}/{p.get('total', '?')}"
    done, total = p.get("bytes_done", 0), p.get("bytes_total")
    return f"{decimal(done)}/{decimal(total)}" if total else decimal(done)


def emit(data: Any, as_json: bool, human: Any = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif human is not None:
        human(data)
    else:
        console.print_json(json.dumps(data, default=str))


def show_error(error: dict[str, Any], as_json: bool, out: Console | None = None) -> None:
    """An error object: JSON on stdout, or for a person on stderr (or `out`). Lines are
    never wrapped at the terminal's width: fix commands (and commands in a message) are
    pasted, and the terminal wraps long lines for the eye anyway."""
    if as_json:
        sys.stdout.write(json.dumps({"error": error}, indent=2) + "\n")
        return
    out = out or err_console
    out.print(f"[bold red]{error.get('code')}[/]: {escape(str(error.get('message')))}",
              soft_wrap=True)  # a message can name a command too
    for c in error.get("causes", []):
        out.print(f"  cause:  {escape(str(c))}", soft_wrap=True)
    for a in error.get("actions", []):
        out.print(f"  fix:    [cyan]{escape(str(a))}[/]", soft_wrap=True)
    if error.get("details"):
        out.print(f"  details: {escape(json.dumps(error['details'], default=str)[:1500])}",
                  soft_wrap=True)
