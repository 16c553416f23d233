"""The web dashboard in a real browser: Debian's headless Chromium driven by Playwright,
against a real service with a sandbox machine. Screenshots of each page go to
tests/artifacts/web/ (git-ignored; docs/img/ has two of them)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Service, needs_root

pytestmark = needs_root
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts" / "web"
M = "web1"
FINISHED = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")

if shutil.which(CHROMIUM) is None:  # scripts/install-system-packages installs it
    pytest.skip("needs Debian's chromium (make setup installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="make setup installs playwright")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        # Playwright's own browser downloads are never used: the system's Chromium.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(service: Service) -> dict[str, str]:
    """The machine, its first backup, and a reader's and an operator's tokens."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    service.protected_machine(M)
    service.exec(M, "echo hello from the guest > /mnt/data/hello.txt && sync")
    c = service.client
    assert service.backup(M)["status"] == "Completed"
    return {"admin": (service.data_dir / "api-token").read_text().strip(),
            "reader": c.post("/tokens", {"name": "web-reader", "role": "reader"})["token"],
            "operator": c.post("/tokens", {"name": "web-op", "role": "operator"})["token"]}


class Tab:
    """One signed-in browser context, with the console's complaints kept."""

    def __init__(self, browser: Any, service: Service, token: str) -> None:
        self.url = service.url
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(30_000)
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(m.text)
                     if m.type in ("error", "warning") else None)
        self.page.goto(self.url + "/")
        assert "/ui/login" in self.page.url  # not signed in: the sign-in page
        self.page.fill("#token", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.url + "/")

    def go(self, path: str) -> Any:
        response = self.page.goto(self.url + path)
        self.page.wait_for_load_state("networkidle")
        return response

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]

    def close(self) -> None:
        self.ctx.close()


@pytest.fixture(scope="module")
def admin(browser: Any, service: Service, site: dict[str, str]) -> Iterator[Tab]:
    tab = Tab(browser, service, site["admin"])
    yield tab
    tab.close()


def wait_job_page(tab: Tab, timeout_s: float = 150) -> str:
    """On a job's page, wait (no reload: htmx polls) until the job has finished."""
    tab.page.wait_for_selector(
        "#job:is(" + ", ".join(f"[data-status={s}]" for s in FINISHED) + ")",
        timeout=timeout_s * 1000)
    return str(tab.page.get_attribute("#job", "data-status"))


def test_sign_in_sets_a_strict_httponly_cookie_and_the_overview_lists_the_machine(
        admin: Tab, service: Service, browser: Any) -> None:
    cookie = next(c for c in admin.ctx.cookies() if c["name"] == "frostpoint_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    service.client.patch("/policies/p1", {"rpo_hours": 24})
    response = admin.go("/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    row = admin.page.locator(f"#machines tr[data-machine={M}]")
    assert "Protected" in row.inner_text() and "Completed" in row.inner_text()
    assert "FileSystemConsistent" in row.inner_text()  # the last backup froze the disk
    assert row.locator("td").last.inner_text() == "yes"  # a backup seconds ago: in its RPO
    assert "No job is running" in admin.page.inner_text("#running")
    assert "v1" in admin.page.inner_text("#vault-usage")
    admin.shot("overview")
    assert not admin.csp_violations(), admin.console
    # A wrong token signs nobody in.
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(service.url + "/ui/login")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert "not known" in page.inner_text(".problem")
    page.screenshot(path=str(ARTIFACTS / "login.png"))
    ctx.close()


def test_backup_now_shows_live_progress_until_completed(admin: Tab, service: Service) -> None:
    # A slower transfer than an empty disk's, so the page is seen while it runs.
    service.exec(M, "head -c 48M /dev/urandom > /mnt/data/big.bin && sync")
    admin.go(f"/ui/machines/{M}")
    admin.page.click("button[data-action=backup]")
    admin.page.wait_for_url(re.compile(r".*/ui/jobs/[^/]+$"))
    job_url = admin.page.url
    first = admin.page.get_attribute("#job", "data-status")
    assert first in ("InProgress", *FINISHED)
    seen = admin.page.locator("#subtasks").inner_text()
    assert "Take Snapshot" in seen and "Transfer data to vault" in seen
    assert wait_job_page(admin) == "Completed"
    assert admin.page.url == job_url  # the page updated itself, nobody reloaded it
    done = admin.page.locator("#subtasks").inner_text()
    assert done.count("Completed") == 2 and "100%" in done, done
    admin.shot("job")
    admin.go("/ui/jobs")
    admin.shot("jobs")
    assert M in admin.page.inner_text("#jobs")


def test_a_failed_job_shows_code_and_fix_and_the_doctor_fixes_it(
        admin: Tab, service: Service) -> None:
    conf = "sed -i 's/^Agent.AutoRestart=.*/Agent.AutoRestart={}/' /etc/frostpoint/agent.conf"
    service.exec(M, conf.format("n") + "; frostpoint-agent stop")
    time.sleep(13)  # past the heartbeat limit (TEST_ENV)
    service.exec(M, conf.format("y"))
    admin.go(f"/ui/machines/{M}")
    admin.page.click("button[data-action=backup]")
    admin.page.wait_for_url(re.compile(r".*/ui/jobs/[^/]+$"))
    assert wait_job_page(admin) == "Failed"
    box = admin.page.locator(".error-box").first.inner_text()
    assert "UserErrorGuestAgentStatusUnavailable" in box
    assert "Causes" in box and "Fix" in box and "frostpoint" in box
    admin.shot("job-failed")
    # The overview lists it among the last day's failures, with its fix.
    admin.go("/")
    assert "UserErrorGuestAgentStatusUnavailable" in admin.page.inner_text("main")
    # The doctor finds the silent agent; its fix (restart the agent) is a safe one.
    admin.go(f"/ui/machines/{M}")
    admin.page.click("#run-doctor")
    row = admin.page.locator("#findings tr[data-check='agent.heartbeat']")
    row.wait_for(timeout=90_000)
    button = row.locator("button[data-action=doctor-fix]")
    assert "risky" not in button.inner_text()
    admin.shot("machine")
    button.click()
    admin.page.wait_for_selector("#fix-result")
    assert "heartbeats again" in admin.page.inner_text("#fix-result")
    service.wait_agent_ready(M)
    admin.go(f"/ui/machines/{M}")
    assert "Ready" in admin.page.inner_text("#agent-status")


def test_browse_a_restore_point_and_restore_a_file(admin: Tab, service: Service) -> None:
    admin.go(f"/ui/machines/{M}")
    first = admin.page.locator("#restore-points li.rp").first
    assert "Snapshot and Vault" in first.inner_text() and "freeze" in first.inner_text()
    first.locator("a", has_text="browse data").click()
    admin.page.wait_for_selector("#entries")
    row = admin.page.locator("#entries tr[data-entry='hello.txt']")
    to = service.data_dir / "restores" / "web-hello"
    row.locator("input[name=to]").fill(str(to))
    admin.shot("browse")
    row.locator("button", has_text="Restore").click()
    admin.page.wait_for_url(re.compile(r".*/ui/jobs/[^/]+$"))
    assert wait_job_page(admin) == "Completed"
    assert (to / "hello.txt").read_text() == "hello from the guest\n"


def test_vault_page_and_charts_show_stored_bytes(admin: Tab, service: Service) -> None:
    admin.go("/ui/vaults")
    stored = admin.page.inner_text("#vault-v1 .stored")
    assert stored != "0 B" and ("MiB" in stored or "KiB" in stored), stored
    assert admin.page.locator("#vault-v1 button[data-action=verify]").count() == 1
    # The vault's own count of what zstd saved on the new chunks: the filesystem's
    # metadata blocks shrink a lot, the random big.bin not at all.
    ratio = float(admin.page.inner_text("#vault-v1 .compression").rstrip("×"))
    moved = [j["details"]["transfer"] for j in service.client.get("/jobs")
             if j["operation"] == "Backup" and j["status"] == "Completed"]
    plain = sum(t["plain_bytes_new"] for t in moved)
    assert plain >= 48 << 20  # big.bin was new
    assert ratio == round(plain / sum(t["sealed_bytes_new"] for t in moved), 2)
    assert 1 < ratio < 4, ratio
    assert admin.page.locator("#vault-v1 canvas").get_attribute("data-drawn") == "1"
    # Verify from its button; GC asks first, and a "no" starts nothing.
    admin.page.click("#vault-v1 button[data-action=verify]")
    admin.page.wait_for_url(re.compile(r".*/ui/jobs/[^/]+$"))
    assert wait_job_page(admin) == "Completed"
    admin.go("/ui/vaults")
    assert "ok" in admin.page.inner_text("#vault-v1 .last-verify")
    assert "never" in admin.page.inner_text("#vault-v1 .last-gc")
    admin.page.once("dialog", lambda d: d.dismiss())
    admin.page.click("#vault-v1 button[data-action=gc]")
    admin.page.wait_for_timeout(500)
    assert admin.page.url.endswith("/ui/vaults")
    admin.page.once("dialog", lambda d: d.accept())
    admin.page.click("#vault-v1 button[data-action=gc]")
    admin.page.wait_for_url(re.compile(r".*/ui/jobs/[^/]+$"))
    assert wait_job_page(admin) == "Completed"
    admin.go("/ui/vaults")
    assert "Completed" in admin.page.inner_text("#vault-v1 .last-gc")
    admin.shot("vaults")
    admin.go(f"/ui/machines/{M}")
    assert admin.page.locator("#chart-duration").get_attribute("data-drawn") == "1"
    admin.go("/ui/config")
    admin.shot("config")
    admin.go("/ui/machines")
    admin.shot("machines")
    admin.go("/")  # now with the failure of the test before, its code and fix
    admin.shot("overview-later")
    assert not admin.csp_violations(), admin.console


def test_a_reader_sees_no_destructive_buttons_and_its_posts_are_refused(
        browser: Any, service: Service, site: dict[str, str]) -> None:
    tab = Tab(browser, service, site["reader"])
    try:
        assert "reader" in tab.page.inner_text("#who")
        rp = service.client.get("/restore-points", params={"machine": M})[0]["id"]
        job = service.client.get("/jobs", params={"machine": M})[0]["id"]
        for path in (f"/ui/machines/{M}", f"/ui/jobs/{job}", "/ui/vaults", "/ui/config", "/"):
            tab.go(path)
            assert tab.page.locator("form[action^='/ui/act/']").count() == 0, path
        tab.go(f"/ui/machines/{M}")
        assert tab.page.locator("#run-doctor").count() == 0
        assert "needs an admin token" in (tab.go("/ui/config") and
                                          tab.page.inner_text("#tokens"))
        tab.shot("reader-machine")
        csrf = tab.page.get_attribute("input[name=csrf]", "value")
        post = tab.ctx.request.post
        for action, form in (("backup", {"machine": M}), ("rp-delete", {"rp": rp}),
                             ("restore-files", {"restore_point": rp, "path": "hello.txt",
                                                "to": str(service.data_dir / "restores")}),
                             ("gc", {"vault": "v1"}), ("token-create", {"name": "x"})):
            r = post(service.url + f"/ui/act/{action}", form={**form, "csrf": csrf})
            assert r.status == 403, (action, r.status)
            assert "AuthorizationFailed" in r.text()
        assert len(service.client.get("/restore-points", params={"machine": M})) >= 1
    finally:
        tab.close()


def test_posts_without_the_csrf_value_or_from_another_origin_are_refused(
        admin: Tab, service: Service) -> None:
    before = len(service.client.get("/jobs", params={"machine": M}))
    post = admin.ctx.request.post
    assert post(service.url + "/ui/act/backup", form={"machine": M}).status == 403
    admin.go("/")
    csrf = admin.page.get_attribute("input[name=csrf]", "value")
    r = post(service.url + "/ui/act/backup", form={"machine": M, "csrf": csrf},
             headers={"Origin": "http://elsewhere.example"})
    assert r.status == 403
    assert len(service.client.get("/jobs", params={"machine": M})) == before
    # Without a session cookie no page is served, only the sign-in.
    r = httpx.get(service.url + f"/ui/machines/{M}")
    assert r.status_code == 303 and "/ui/login" in r.headers["location"]
    assert os.path.exists(ARTIFACTS / "overview.png")
