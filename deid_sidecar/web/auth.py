"""Authentication for the web UI and API: bearer token, or a login that sets a session cookie.

- `Authorization: Bearer <token>` works for every protected route (scripts, Home Assistant).
- The login page takes the token or a username/password and sets an HttpOnly session cookie.
  Requests authenticated by that cookie that change state must carry the CSRF token (double submit:
  the readable `deid_csrf` cookie echoed in an `X-CSRF-Token` header) and, when the browser sends an
  Origin, it must be this server's own.
- Open without auth: `/healthz`, `/login`, `/static/*` (no data in them) and `/streams/*` (they carry
  their own `?token=`).
- When the server listens beyond loopback and neither a token nor users are configured, a random
  token is generated at start and logged once: auth is never silently off on a network.
- With auth off (loopback only), a request whose Host is not loopback, `server.host` or one of
  `server.allowed_hosts` is refused: a web page cannot reach the API through DNS rebinding.
- Failed logins are limited per user name and per client address with a growing lockout, and each
  user keeps at most MAX_SESSIONS_PER_USER sessions (one user's logins never evict another's).
All secret comparisons use `hmac.compare_digest` over fixed-length digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from deid_sidecar import __version__

log = logging.getLogger(__name__)

SESSION_COOKIE = "deid_session"
CSRF_COOKIE = "deid_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
#: A user's oldest session is dropped beyond this: memory stays bounded per user.
MAX_SESSIONS_PER_USER = 20
#: A failed login waits this long before answering, which slows guessing.
LOGIN_FAIL_DELAY_S = 0.5
#: Failed logins allowed per user name and per address before each further one locks them out
#: for LOCKOUT_BASE_S, doubling up to LOCKOUT_MAX_S. A success clears the count.
FREE_LOGIN_FAILURES = 5
LOCKOUT_BASE_S = 1.0
LOCKOUT_MAX_S = 900.0
#: Failure records kept (oldest forgotten first): guessing random names cannot exhaust memory.
MAX_FAILURE_RECORDS = 10_000
LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104
OPEN_PREFIXES = ("/streams/", "/static/")
OPEN_PATHS = frozenset({"/healthz", "/login"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class WebUser:
    """A login for the web UI; `admin` may add cameras, save the config and see the original view."""

    name: str
    password: str
    admin: bool = False


@dataclass(frozen=True)
class Identity:
    user: str
    admin: bool
    via: str  # bearer | session | none
    csrf: str = ""


@dataclass
class _Session:
    identity: Identity
    expires: float


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


class LoginLimiter:
    """Counts failed logins per key (a user name, an address) and locks a key out with backoff."""

    def __init__(self) -> None:
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, keys: list[str], now: float) -> float:
        """Seconds until every key may try again (0 when none is locked)."""
        waits = [f.locked_until - now for k in keys if (f := self._failures.get(k)) is not None]
        return max([0.0, *waits])

    def failed(self, keys: list[str], now: float) -> None:
        for key in keys:
            record = self._failures.pop(key, None) or _Failures()
            record.count += 1
            over = record.count - FREE_LOGIN_FAILURES
            if over >= 0:
                record.locked_until = now + min(LOCKOUT_BASE_S * 2.0**over, LOCKOUT_MAX_S)
            self._failures[key] = record
        while len(self._failures) > MAX_FAILURE_RECORDS:
            self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


def _digest(value: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever the input's length.
    return hashlib.sha256(value.encode()).digest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(_digest(given), _digest(expected))


class Auth:
    """Token/users/sessions of one web app."""

    def __init__(
        self,
        token: str | None,
        users: Mapping[str, WebUser] | None,
        host: str,
        allowed_hosts: list[str] | None = None,
    ) -> None:
        self.users = dict(users or {})
        self.hosts = LOCAL_HOSTS | {h.lower() for h in allowed_hosts or []}
        if host not in ANY_ADDRESS:
            self.hosts |= {host.lower()}
        self.limiter = LoginLimiter()
        self.generated = False
        if not token and not self.users and host not in LOCAL_HOSTS:
            token = secrets.token_urlsafe(24)
            self.generated = True
            # Logged once, on purpose in full: it is the only way the operator learns it.
            log.warning("no server.token or users configured and listening on %s: generated API token %s",
                        host, token)  # fmt: skip
        self.token = token or None
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.token is not None or bool(self.users)

    # --- credentials -------------------------------------------------------------------------------

    def check_login(self, username: str, password: str, token: str) -> Identity | None:
        if token and self.token and same_secret(token, self.token):
            return Identity("admin", True, "session")
        user = self.users.get(username)
        if user is not None and password and same_secret(password, user.password):
            return Identity(user.name, user.admin, "session")
        if user is None and password:
            same_secret(password, password)  # unknown user: spend the same time as a wrong password
        return None

    def new_session(self, identity: Identity) -> tuple[str, Identity]:
        now = time.time()
        session_id = secrets.token_urlsafe(32)
        identity = Identity(identity.user, identity.admin, "session", secrets.token_urlsafe(24))
        for old_id in [k for k, v in self._sessions.items() if v.expires < now]:
            del self._sessions[old_id]
        mine = [k for k, v in self._sessions.items() if v.identity.user == identity.user]
        for old_id in mine[: max(0, len(mine) + 1 - MAX_SESSIONS_PER_USER)]:
            del self._sessions[old_id]  # oldest first: the dict keeps insertion order
        self._sessions[session_id] = _Session(identity, now + SESSION_TTL_S)
        return session_id, identity

    def end_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def identify(self, request: web.Request) -> Identity | None:
        if not self.enabled:
            return Identity("anonymous", True, "none")
        header = request.headers.get("Authorization")
        if header is not None:  # a credential given is the one judged: never fall back to a cookie
            given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            if given and self.token and same_secret(given, self.token):
                return Identity("token", True, "bearer")
            return None
        session = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is None or session.expires < time.time():
            return None
        return session.identity


IDENTITY_KEY = web.AppKey("identity_auth", Auth)
REQUEST_IDENTITY = web.RequestKey("identity", Identity)


def identity_of(request: web.Request) -> Identity:
    return request[REQUEST_IDENTITY]


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _origin_ok(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def _host_ok(request: web.Request, auth: Auth) -> bool:
    """With auth off, only our own names: a rebinding page sends its own (foreign) Host."""
    if auth.enabled:
        return True
    name = urlsplit("//" + request.host).hostname or ""
    return name.lower() in auth.hosts


def _csrf_ok(request: web.Request, identity: Identity) -> bool:
    if not _origin_ok(request):
        return False
    given = request.headers.get(CSRF_HEADER, "")
    return bool(given) and same_secret(given, identity.csrf)


def auth_middleware(auth: Auth) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != "/healthz" and not _host_ok(request, auth):
            return _json_error(421, f"this server does not answer to Host {request.host!r} "
                                    "(add it to server.allowed_hosts)")  # fmt: skip
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await handler(request)
        identity = auth.identify(request)
        if identity is None:
            if request.method in SAFE_METHODS and not path.startswith("/api/") and path != "/metrics":
                raise web.HTTPFound(f"/login?next={path}")
            return _json_error(401, "authentication required: Bearer token or login")
        if request.method not in SAFE_METHODS:
            # Bearer requests need no CSRF check: browsers never add that header on their own.
            if identity.via == "session" and not _csrf_ok(request, identity):
                return _json_error(403, f"missing or wrong {CSRF_HEADER} header (or foreign Origin)")
            if identity.via == "none" and not _origin_ok(request):
                return _json_error(403, "state change from a foreign Origin refused")
        request[REQUEST_IDENTITY] = identity
        return await handler(request)

    return check


# --- login / logout -------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only redirect to a path on this server (no `//evil.example`)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


# The login page (the one page served before authentication) is rendered here, and so is every page:
# pages.py builds on this module (identities, this rendering), never the other way round.

# The pages load only their own files: a stored XSS could not pull in or send to anything else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def read_static(name: str) -> bytes:
    """A file of the package's own `static/` folder (the caller vouches for `name`)."""
    return resources.files("deid_sidecar.web").joinpath("static", name).read_bytes()


def render_page(name: str) -> web.Response:
    html = read_static(name).decode().replace("{{version}}", __version__)
    return web.Response(text=html, content_type="text/html", headers=SECURITY_HEADERS)


async def login_page(request: web.Request) -> web.Response:
    return render_page("login.html")


async def login(request: web.Request) -> web.StreamResponse:
    auth = request.app[IDENTITY_KEY]
    if not _origin_ok(request):
        return _json_error(403, "login from a foreign Origin refused")
    form = await request.post()
    username, password, token = (str(form.get(k, "")) for k in ("username", "password", "token"))
    keys = [f"address:{request.remote}", f"user:{username}" if username else "token"]
    wait = auth.limiter.retry_after(keys, time.monotonic())
    if wait > 0:
        # Refused before any credential is looked at: a locked-out guesser learns nothing.
        if "text/html" in request.headers.get("Accept", ""):  # the login form: back to it, with a note
            raise web.HTTPFound(f"/login?locked={math.ceil(wait)}")
        return web.json_response(
            {"error": f"too many failed logins: try again in {math.ceil(wait)} s"},
            status=429,
            headers={"Retry-After": str(math.ceil(wait))},
        )
    identity = auth.check_login(username, password, token)
    if identity is None:
        auth.limiter.failed(keys, time.monotonic())
        log.warning("web login failed from %s", request.remote)  # never the name: it may be a password
        await _fail_delay()
        raise web.HTTPFound("/login?failed=1")
    auth.limiter.succeeded(keys)
    session_id, identity = auth.new_session(identity)
    log.info("web login: %s", identity.user)
    response = web.HTTPFound(_safe_next(str(form.get("next", "/"))))
    secure = request.secure
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", secure=secure,
                        max_age=int(SESSION_TTL_S), path="/")  # fmt: skip
    # Readable by the page's script, which echoes it in X-CSRF-Token (double submit).
    response.set_cookie(CSRF_COOKIE, identity.csrf, httponly=False, samesite="Strict", secure=secure,
                        max_age=int(SESSION_TTL_S), path="/")  # fmt: skip
    raise response


async def _fail_delay() -> None:
    await asyncio.sleep(LOGIN_FAIL_DELAY_S)


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[IDENTITY_KEY].end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = web.json_response({"logged_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    response.del_cookie(CSRF_COOKIE, path="/")
    return response
