"""Who may call what, for every transport: the bearer token, the loopback rule for load/unload, request ids.

Plain Python: the HTTP hooks and routes and the gRPC service ask the same questions here, so both
transports let in and refuse exactly the same callers.
"""
from __future__ import annotations

import hmac
import ipaddress
import re
import uuid
from typing import Iterable

from .errors import AdminRefused, Unauthorized

# Headers (gRPC metadata keys are the same names, lower-cased) a reverse proxy adds: a request
# carrying one did not come from this machine's own user.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-Ip")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(sent: str | None) -> str:
    """The request's id for its log line: the client's own when short and plain, so it cannot forge
    log lines, else a new random one."""
    return sent if sent and REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex[:16]


def check_token(expected: str, authorization: str | None) -> None:
    """Refuse a request whose `Authorization` value is not `Bearer <expected>` (no token set: all pass)."""
    if not expected:
        return
    # Constant-time comparison: the time taken says nothing about how much of the token matched.
    if not hmac.compare_digest((authorization or "").encode(), f"Bearer {expected}".encode()):
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <API_TOKEN>'")


def require_admin(api_token: str, host: str, local_address: str, proxy_headers: Iterable[str] = ()) -> None:
    """Refuse load/unload when anyone on the network could send them: no token and not loopback.

    `local_address` is where the connection arrived (this side's socket address, or the peer's: a
    loopback peer can only have reached a loopback socket); `proxy_headers` the proxy headers it carried.
    """
    if api_token:
        return  # the caller already showed the bearer token
    proxied = list(proxy_headers)
    if is_loopback(host) and is_loopback(local_address) and not proxied:
        return
    raise AdminRefused(
        f"model load/unload refused: no API_TOKEN is set and the server listens on HOST={host}"
        + (f" behind a proxy ({', '.join(proxied)})" if proxied else "")
        + "; set API_TOKEN to manage models over the network, or use MODEL_POLL_SECONDS"
    )


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`); a host name may resolve to anything."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
