"""The management API under a fuzzer: schemathesis makes requests from /openapi.json with
the admin token, and no answer may be a 5xx (schemathesis' not_a_server_error check),
nor may a 200 differ from the route's response model (response_schema_conformance).

Bounded: a few examples per route, no database of examples between runs, so the run
stays well under a minute and is the same kind of run each time.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from conftest import Service

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
# Reads are cheap and have the numeric query parameters (limit, sample): more of them.
READ_EXAMPLES = 5 * EXAMPLES
# Valid requests (they reach the routes' code) and invalid ones (they test validation).
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)

# Routes whose real work is too heavy or reaches outside the test's data directory.
SKIP = {
    # Creates sandbox machines (loop devices, mkfs, namespaces): seconds each on a shared
    # 2-core host, and its validation is covered by tests/test_backup_restore.py.
    ("POST", "/machines"),
    # Runs argv inside a machine; there is none here (POST /machines is skipped), so
    # every example would be the same 404.
    ("POST", "/machines/{name}/exec"),
}


# 5xx defects the fuzzer finds in code another part of issue 9 owns; each is reported
# (xfail) rather than hidden, and is to be deleted here when that part is merged.
KNOWN: dict[str, str] = {}


def prepare(method: str, path: str, case: Any) -> None:
    """Keep what the fuzzer writes inside the service's data directory."""
    if (method, path) == ("POST", "/vaults") and isinstance(case.body, dict):
        # An admin may put a vault at any host path; a fuzzer must not (it would write
        # vault files into random directories of this host). The default lands in DATA.
        case.body["location"] = None
    if path.startswith("/restores/") and isinstance(case.body, dict) and case.body.get("to"):
        # Same for restore targets: any path is valid for an admin.
        case.body["to"] = "restores/fuzz"


def fuzz_one(op: Any, method: str, path: str, url: str, headers: dict[str, str],
             mode: GenerationMode) -> Any:
    @settings(max_examples=READ_EXAMPLES if method == "GET" else EXAMPLES, deadline=None,
              database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        prepare(method, path, case)
        case.call_and_validate(base_url=url, headers=headers, checks=[not_a_server_error,
                                                                 response_schema_conformance])
    return run


def test_no_route_answers_a_server_error(service: Service) -> None:
    headers = dict(service.client.http.headers)
    raw = httpx.get(f"{service.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        method, path = op.method.upper(), op.path
        if (method, path) in SKIP:
            continue
        ran += 1

        for mode in MODES:
            try:
                fuzz_one(op, method, path, service.url, headers, mode)()
            except Unsatisfiable:  # no invalid input exists (e.g. only free-text params)
                pass
            except Exception as e:  # noqa: BLE001 - collect every route's failure, then report
                failures.append(f"{method} {path} ({mode.value}): {str(e)[:600]}")
    assert ran >= 40, f"only {ran} routes fuzzed: is /openapi.json complete?"
    new = [f for f in failures if not f.startswith(tuple(KNOWN))]
    assert not new, "server errors:\n" + "\n\n".join(new)
    if failures:
        pytest.xfail("known server errors, owned elsewhere: " + "; ".join(
            f"{f[:200]} [{next(v for k, v in KNOWN.items() if f.startswith(k))}]"
            for f in failures))


@pytest.fixture(autouse=True)
def _no_leftover_machines(service: Service) -> Any:
    yield
    # The fixture's teardown deletes machines too; this keeps the module clean at once.
    for m in service.client.get("/machines"):
        service.client.delete(f"/machines/{m['name']}")
