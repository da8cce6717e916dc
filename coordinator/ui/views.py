"""The dashboard's routes (the ``ui`` blueprint under ``/ui``): login and logout, the pages,
the HTML fragments ``live.js`` swaps in, the SVG charts and the admin's actions.

Access (:func:`require_session`, the blueprint's ``before_request``): every route but the
login and the static files needs a session; each POST needs the session's CSRF token; an
action needs the admin role. The login POST needs the login form's own token (a signed
double-submit cookie) and failed logins are rate-limited per source address. Actions
call the same service methods as the REST admin routes, with the operator's token id as
the actor (revocations and releases too: history events of the registry).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any, cast

from flask import Blueprint, Response, make_response, redirect, render_template, request

from coordinator.auth import actor_id, token_matches
from coordinator.errors import describe
from coordinator.rest.state import current_state
from coordinator.ui import pages
from coordinator.ui.app import (
    COOKIE,
    LOGIN_COOKIE,
    UI_PREFIX,
    current_session,
    set_session,
    ui_state,
)
from coordinator.ui.charts import bar_chart, line_chart
from coordinator.ui.sessions import Role
from fedge.errors import FedgeError

__all__ = ["refuse", "require_session", "ui"]

logger = logging.getLogger(__name__)

ui = Blueprint(
    "ui",
    __name__,
    url_prefix=UI_PREFIX,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

_OPEN_ENDPOINTS = frozenset({"ui.login_form", "ui.login", "ui.static"})
_MAX_TOKEN = 512
_LOGIN_FORM_SECONDS = 3600
_SVG = "image/svg+xml"


def refuse(status: int, message: str) -> Response:
    """An HTML error page."""
    response = make_response(render_template("error.html", status=status, message=message))
    response.status_code = status
    return response


def _see_other(path: str) -> Response:
    return cast(Response, redirect(path, code=303))


@ui.before_request
def require_session() -> Response | None:
    """A session for every route but the login and the static files: a GET without one is
    sent to the login page (303), any other request is refused (403); a POST must carry the
    session's CSRF token (403 otherwise, and nothing changes)."""
    session = ui_state().sessions.get(request.cookies.get(COOKIE))
    set_session(session)
    if request.endpoint in _OPEN_ENDPOINTS:
        return None
    if session is None:
        if request.method in ("GET", "HEAD"):
            return _see_other(f"{UI_PREFIX}/login")
        return refuse(403, "not logged in: log in at /ui/login")
    if request.method == "POST" and not session.csrf_matches(request.form.get("csrf_token")):
        return refuse(403, "the form's CSRF token is missing or wrong: reload the page")
    return None


def _require_admin() -> str:
    """The session's actor id when it is the admin's; empty for a viewer (whom the caller
    answers with :func:`_viewer_refused`)."""
    session = current_session()
    assert session is not None  # require_session ran
    return session.actor if session.is_admin else ""


@ui.errorhandler(FedgeError)
def _fedge_error(exc: FedgeError) -> Response:
    status, code = describe(exc)
    return refuse(status, f"{code}: {exc}")


@ui.app_template_global()
def page_url(number: int) -> str:
    """The current URL at page ``number`` (other query parameters kept)."""
    args = request.args.to_dict()
    args["page"] = str(number)
    query = "&".join(f"{k}={v}" for k, v in sorted(args.items()) if k in ("page", "per_page"))
    return f"{request.path}?{query}"


def _render(template: str, **context: Any) -> str:
    session = current_session()
    return render_template(
        template,
        session=session,
        is_admin=session is not None and session.is_admin,
        when=pages.when,
        round_label=pages.round_label,
        alert_region=pages.alert_region,
        **context,
    )


def _paging() -> tuple[int, int] | Response:
    """``(page, per_page)`` from the query (defaults 1 and 50; per_page at most 200)."""
    values = []
    for name, default in (("page", 1), ("per_page", pages.DEFAULT_PER_PAGE)):
        text = request.args.get(name)
        if text is None:
            values.append(default)
            continue
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            return refuse(400, f"{name} must be a positive integer, got {text[:40]!r}")
        values.append(int(text))
    return values[0], min(values[1], pages.MAX_PER_PAGE)


# Login ------------------------------------------------------------------------------------


def _login_signature(nonce: str) -> str:
    return hmac.new(ui_state().login_key, nonce.encode("utf-8"), hashlib.sha256).hexdigest()


def _login_page(error: str | None, status: int = 200) -> Response:
    """The login form with a fresh pre-session CSRF token: a random nonce in the
    ``fedge_login`` cookie (HttpOnly, SameSite=Strict, path /ui/login) and its HMAC under
    this app's secret key in the form, so only a form this server gave the same browser
    can log in (a signed double-submit cookie)."""
    nonce = secrets.token_urlsafe(32)
    response = make_response(_render("login.html", error=error, login_csrf=_login_signature(nonce)))
    response.status_code = status
    state = ui_state()
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=_LOGIN_FORM_SECONDS,
        path=f"{UI_PREFIX}/login",
        secure=state.config.secure_cookie or request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def _login_csrf_matches() -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    sent = request.form.get("csrf_token", "")
    if not nonce or not sent or len(nonce) > _MAX_TOKEN or len(sent) > _MAX_TOKEN:
        return False
    return hmac.compare_digest(sent.encode(), _login_signature(nonce).encode())


@ui.get("/login")
def login_form() -> Any:
    if current_session() is not None:
        return _see_other(f"{UI_PREFIX}/")
    return _login_page(None)


def _role_of(token: str) -> Role | None:
    admin_hash = current_state().config.admin_token_hash
    viewer_hash = ui_state().config.viewer_token_hash
    if admin_hash is not None and token_matches(token, admin_hash):
        return "admin"
    if viewer_hash is not None and token_matches(token, viewer_hash):
        return "viewer"
    return None


@ui.post("/login")
def login() -> Any:
    """Log in: the form's pre-session CSRF token must match its cookie (403 otherwise);
    an address past its failed-login limit is refused 429 (``Retry-After``) before its
    token is looked at; an unknown token gets the form again (200, so a browser logs no failed
    load) with the error, no session, and counts as a failed login."""
    state = ui_state()
    address = request.remote_addr or "unknown"
    wait = state.logins.wait(address)
    if wait > 0:
        seconds = state.logins.retry_after(wait)
        logger.warning("dashboard: a login from %s was refused: too many failed logins", address)
        response = _login_page(f"too many failed logins: retry in {seconds} s", 429)
        response.headers["Retry-After"] = str(seconds)
        return response
    if not _login_csrf_matches():
        logger.warning("dashboard: a login without this server's form token was refused")
        return _login_page("the login form expired or did not come from this server: retry", 403)
    token = request.form.get("token", "").strip()
    role = _role_of(token) if 0 < len(token) <= _MAX_TOKEN else None
    if role is None:
        state.logins.acquire(address)
        logger.warning("dashboard: a login with an unknown token was refused")
        return _login_page("unknown token", 200)
    state.sessions.drop(request.cookies.get(COOKIE))  # a login never reuses a session id
    session_id, session = state.sessions.create(role, actor_id(role, token))
    logger.info("dashboard: %s logged in", session.actor)
    response = _see_other(f"{UI_PREFIX}/")
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(state.sessions.lifetime_seconds),
        path=UI_PREFIX,
        secure=state.config.secure_cookie or request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    response.delete_cookie(
        LOGIN_COOKIE, path=f"{UI_PREFIX}/login", httponly=True, samesite="Strict"
    )
    return response


@ui.post("/logout")
def logout() -> Any:
    ui_state().sessions.drop(request.cookies.get(COOKIE))
    response = _see_other(f"{UI_PREFIX}/login")
    response.delete_cookie(COOKIE, path=UI_PREFIX, httponly=True, samesite="Strict")
    return response


# Pages --------------------------------------------------------------------------------------


@ui.get("/")
def overview() -> Any:
    service = current_state().service
    return _render("overview.html", title="Overview", o=pages.overview(service))


@ui.get("/rounds")
def rounds() -> Any:
    paging = _paging()
    if isinstance(paging, Response):
        return paging
    service = current_state().service
    model, regions = pages.region_accuracy(service)
    return _render(
        "rounds.html",
        title="Rounds",
        chart_key=pages.state_key(service, "accuracy"),
        regions_key=pages.state_key(service, "regions"),
        region_model=model,
        regions=regions,
        **pages.rounds_page(service, *paging),
    )


@ui.get("/models")
def models() -> Any:
    paging = _paging()
    if isinstance(paging, Response):
        return paging
    service = current_state().service
    return _render("models.html", title="Models", **pages.models_page(service, *paging))


@ui.get("/clients")
def clients() -> Any:
    paging = _paging()
    if isinstance(paging, Response):
        return paging
    service = current_state().service
    behind = ui_state().config.behind_seconds
    return _render(
        "clients.html",
        title="Clients",
        **pages.clients_page(service, *paging, behind_seconds=behind),
    )


@ui.get("/data")
def data() -> Any:
    paging = _paging()
    if isinstance(paging, Response):
        return paging
    service = current_state().service
    return _render(
        "data.html",
        title="Data",
        chart_key=pages.state_key(service, "drift"),
        **pages.data_page(service, *paging),
    )


@ui.get("/alerts")
def alerts() -> Any:
    paging = _paging()
    if isinstance(paging, Response):
        return paging
    service = current_state().service
    return _render("alerts.html", title="Alerts", **pages.alerts_page(service, *paging))


# Fragments and charts -------------------------------------------------------------------------


@ui.get("/fragments/<name>")
def fragment(name: str) -> Any:
    """The parts of the pages that ``live.js`` refreshes: ``overview`` (the counters),
    ``rounds-table`` (the rounds page's table, same ``page``/``per_page``) and
    ``accuracy-chart`` (the chart's image, whose URL names the store state)."""
    service = current_state().service
    if name == "overview":
        return _render("_overview.html", o=pages.overview(service))
    if name == "rounds-table":
        paging = _paging()
        if isinstance(paging, Response):
            return paging
        return _render("_rounds_table.html", **pages.rounds_page(service, *paging))
    if name == "accuracy-chart":
        return _render("_accuracy_chart.html", chart_key=pages.state_key(service, "accuracy"))
    return refuse(404, f"no fragment {name[:40]!r}")


def _svg_response(svg: str) -> Response:
    response = make_response(svg)
    response.mimetype = _SVG
    return response


@ui.get("/charts/<name>.svg")
def chart(name: str) -> Any:
    service = current_state().service
    cache = ui_state().charts
    if name == "accuracy":

        def draw() -> str:
            x, series = pages.accuracy_series(service)
            return line_chart("Accuracy and loss per round", x, series, xlabel="round")

    elif name == "regions":

        def draw() -> str:
            model, regions = pages.region_accuracy(service)
            label = model.version if model is not None else "no model"
            return bar_chart(f"Accuracy per region ({label})", regions, ylabel="accuracy")

    elif name == "drift":

        def draw() -> str:
            drift = pages.drift_by_feature(service)
            psi = {feature: values["psi"] for feature, values in drift.items()}
            return bar_chart("Largest drift (PSI) per feature", psi, ylabel="PSI")

    else:
        return refuse(404, f"no chart {name[:40]!r}")
    return _svg_response(cache.get(name, pages.state_key(service, name), draw))


# Actions (admin) ------------------------------------------------------------------------------


def _viewer_refused() -> Response:
    return refuse(403, "this action needs the admin token: a viewer can only look")


@ui.post("/models/<version>/promote")
def promote(version: str) -> Any:
    actor = _require_admin()
    if not actor:
        return _viewer_refused()
    current_state().service.promote(version, actor=actor)
    return _see_other(f"{UI_PREFIX}/models")


@ui.post("/models/rollback")
def rollback() -> Any:
    actor = _require_admin()
    if not actor:
        return _viewer_refused()
    current_state().service.rollback(actor=actor)
    return _see_other(f"{UI_PREFIX}/models")


@ui.post("/clients/<client_id>/revoke")
def revoke(client_id: str) -> Any:
    actor = _require_admin()
    if not actor:
        return _viewer_refused()
    current_state().service.revoke_client(client_id, actor=actor)
    return _see_other(f"{UI_PREFIX}/clients")


@ui.post("/clients/<client_id>/release")
def release(client_id: str) -> Any:
    actor = _require_admin()
    if not actor:
        return _viewer_refused()
    current_state().service.release_quarantine(client_id, actor=actor)
    return _see_other(f"{UI_PREFIX}/clients")
