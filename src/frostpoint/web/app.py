"""The web dashboard (docs/web.md): pages at / and /ui/ on the management address,
rendered on the server from the API's typed answers (web/calls.py), with htmx for the
parts that change while one looks (running jobs, the doctor)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frostpoint import __version__
from frostpoint import schemas as S
from frostpoint.service.tokens import Tokens
from frostpoint.web import pages
from frostpoint.web.calls import ACTIONS, Api, ApiFailure
from frostpoint.web.session import COOKIE, SECURITY_HEADERS, Session, WebAuth
from frostpoint.web.stats import age, human_bytes

HERE = Path(__file__).parent
Page = Callable[[Request, Session], Awaitable[Response]]


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never //elsewhere or a scheme."""
    if target and target.startswith("/") and not target.startswith("//") and \
            "\\" not in target:
        return target
    return "/"


class SecurityHeaders:
    """The dashboard's headers on its pages and assets (not on the REST API's answers).
    Plain ASGI: it touches only the response's start, never the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith("/ui")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_dashboard(app: FastAPI, tokens: Tokens, restore_area: Path) -> None:
    """restore_area: where the restore forms suggest restoring to (an operator may
    restore only there; service/roles.py contained)."""
    api = Api(app)
    auth = WebAuth(tokens)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(bytes=human_bytes)
    templates.env.globals.update(version=__version__, actions=ACTIONS,
                                 restore_area=str(restore_area))

    app.add_middleware(SecurityHeaders)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    def render(request: Request, session: Session | None, template: str, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        now = datetime.now(UTC)
        return templates.TemplateResponse(request, template, {
            "session": session, "who": session.caller if session else None,
            "csrf": session.csrf if session else "", "now": now,
            "ago": lambda iso: age(iso, now),
            "can": lambda action: bool(session and ACTIONS[action].allowed(session.caller)),
            **ctx}, status_code=status)

    def failure_page(request: Request, session: Session | None, e: ApiFailure) -> HTMLResponse:
        return render(request, session, "error.html", status=e.status, error=e.error)

    def add_page(path: str, body: Page) -> None:
        """A signed-in page: without a session, off to the sign-in; an API refusal is
        shown with its code, causes and fix."""
        async def handler(request: Request) -> Response:
            session = auth.session(request)
            if session is None:
                if request.headers.get("hx-request"):
                    return HTMLResponse("signed out", status_code=401,
                                        headers={"HX-Redirect": "/ui/login"})
                return RedirectResponse(
                    "/ui/login?next=" + quote(request.url.path, safe="/"), 303)
            try:
                return await body(request, session)
            except ApiFailure as e:
                return failure_page(request, session, e)
        app.add_api_route(path, handler, methods=["GET"], include_in_schema=False,
                          response_class=HTMLResponse)

    for path, body in pages.routes(pages.PageContext(api, render)).items():
        add_page(path, body)

    @app.get("/ui/login", include_in_schema=False, response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        return render(request, None, "login.html", next=_safe_next(next))

    @app.post("/ui/login", include_in_schema=False, response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", "")).strip()
        target = _safe_next(str(form.get("next", "/")))
        if not auth.same_origin(request) or tokens.authenticate(token) is None:
            return render(request, None, "login.html", status=401, next=target,
                          problem="That token is not known to this server.")
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/ui/login", 303)
        if auth.same_origin(request):  # another site cannot sign one out either
            response.delete_cookie(COOKIE, path="/")
        return response

    @app.post("/ui/act/{action}", include_in_schema=False, response_class=HTMLResponse)
    async def act(request: Request, action: str) -> Response:
        session = auth.session(request)
        if session is None:
            return HTMLResponse("sign in first", status_code=401)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not auth.post_allowed(request, form.get("csrf", ""), session):
            return render(request, session, "error.html", status=403, error=S.ApiError(
                code="AuthorizationFailed", kind="user", retryable=False,
                message="the form's CSRF value is missing or stale; reload the page",
                causes=[], actions=[], details={}, doc=""))
        spec = ACTIONS.get(action)
        if spec is None:
            return HTMLResponse("no such action", status_code=404)
        if not spec.allowed(session.caller):  # the API refuses too; say it plainly first
            return render(request, session, "error.html", status=403, error=S.ApiError(
                code="AuthorizationFailed", kind="user", retryable=False,
                message=f"token {session.caller.name} has role {session.caller.role}; "
                        f"{action} needs {spec.role}", causes=[], actions=[],
                details={"role": session.caller.role, "needs": spec.role}, doc=""))
        try:
            path, body, query = spec.request(form)
        except ValueError as e:
            return render(request, session, "error.html", status=422, error=S.ApiError(
                code="InvalidInput", kind="user", retryable=False, message=str(e),
                causes=[], actions=[], details={}, doc=""))
        try:
            result = await api.call(session.token, spec.method, path,
                                    body if spec.method != "DELETE" else None, query or None)
        except ApiFailure as e:
            return failure_page(request, session, e)
        if isinstance(result, S.Job):
            return RedirectResponse(f"/ui/jobs/{quote(result.id)}", 303)
        if isinstance(result, S.NewToken):
            return render(request, session, "token_made.html", token=result)
        if isinstance(result, S.FixResult):
            return render(request, session, "fixed.html", result=result.result,
                          machine=form.get("machine", ""), check=form.get("check", ""))
        return RedirectResponse(_safe_next(form.get("next")), 303)
