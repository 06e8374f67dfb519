"""Who may talk to a server: the `Host` allow-list, the "auto" API key, other users here.

Loopback is not a trust boundary. A web page the user visits can point its own name at
127.0.0.1 (DNS rebinding) and then call the server as if it were same-origin; the browser
still sends the page's name in `Host`, so the server answers only `Host` names it knows
(`HostGuard`). Other users of a shared machine reach 127.0.0.1 too; an API key keeps them
out, and `api_key="auto"` makes one up. Nothing here imports torch.
"""

from __future__ import annotations

import getpass
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass

from jupyter_qwen.options import ConfigError

AUTO_API_KEY = "auto"
ANY_HOST = "*"
LOOPBACK_NAMES = frozenset({"localhost"})
LOOPBACK_SUFFIX = ".localhost"
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_PORT = re.compile(r"[0-9]{0,5}")


def api_key_for(value: str | None) -> str | None:
    """The key a server requires for `api_key=value`: a new random one for "auto"."""
    if value is not None and value.strip().lower() == AUTO_API_KEY:
        return secrets.token_urlsafe(32)
    return value


# ---- Host names ------------------------------------------------------------------------------

def host_name(header: str) -> str | None:
    """The host of a `Host` header value: lower case, without its port, IPv6 brackets or
    trailing dot. None when there is no host in it or it is malformed."""
    value = header.strip()
    if value.startswith("["):
        name, close, port = value[1:].partition("]")
        if not close or (port and not (port[0] == ":" and _PORT.fullmatch(port[1:]))):
            return None
        try:
            return ipaddress.IPv6Address(name).compressed
        except ValueError:
            return None
    name, colon, port = value.partition(":")
    if colon and not _PORT.fullmatch(port):
        return None  # several colons (an IPv6 address without brackets), or a bad port
    name = name.lower().removesuffix(".")
    return name if _NAME.fullmatch(name) else None


def _is_loopback_ip(name: str) -> bool:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The `Host` names a server answers to, beyond loopback's (which it always does):
    exact `names`, and names ending in one of `suffixes` (from "*.example.org")."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    any_host: bool = False

    def allows(self, header: str | None) -> bool:
        """Whether a request with this `Host` header (None: none sent) may go on.

        A request without `Host` (HTTP/1.0) goes on: browsers always send one, so DNS
        rebinding cannot produce it, and a local program could as well send 127.0.0.1."""
        if header is None or self.any_host:
            return True
        name = host_name(header)
        if name is None:
            return False
        return (name in LOOPBACK_NAMES or name.endswith(LOOPBACK_SUFFIX)
                or _is_loopback_ip(name) or name in self.names
                or any(name.endswith(suffix) for suffix in self.suffixes))


def host_policy(bound: str, allowed_hosts: tuple[str, ...] = ()) -> HostPolicy:
    """The policy of a server bound to `bound` with the user's `allowed_hosts`.

    Besides loopback names it allows the bound address; a server bound to another address
    than loopback also answers to the machine's host name, and one bound to every address
    (0.0.0.0, ::) to each address of the machine (an address typed as such cannot be
    rebound, so these open nothing to DNS rebinding)."""
    names: set[str] = {name} if (name := _bare_name(bound)) else set()
    suffixes: list[str] = []
    for given in allowed_hosts:
        given = given.strip().lower()
        if given == ANY_HOST:
            return HostPolicy(any_host=True)
        wildcard = given.startswith("*.")
        name = _bare_name(given[2:] if wildcard else given)
        if name is None or (wildcard and ":" in name):
            raise ConfigError("allowed_hosts", f"allowed_hosts: {given!r} is not a host name, "
                              "an address, '*.' and a domain, or '*'")
        if wildcard:
            suffixes.append(f".{name}")
        else:
            names.add(name)
    if not _is_loopback_ip(_bare_name(bound) or bound) and bound.lower() != "localhost":
        names |= _machine_names(unspecified=_is_unspecified(bound))
    return HostPolicy(frozenset(names), tuple(suffixes))


def _bare_name(text: str) -> str | None:
    """A name or address as the user writes it (brackets and ports allowed)."""
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"  # a bare IPv6 address
    return host_name(text)


def _is_unspecified(bound: str) -> bool:
    try:
        return ipaddress.ip_address(bound.strip("[]")).is_unspecified
    except ValueError:
        return False


def _machine_names(unspecified: bool) -> set[str]:
    names = {socket.gethostname().lower().removesuffix(".")}
    if unspecified:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                if address.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(_bare_name(address.address.split("%")[0]) or "")
    return names - {""}


class HostGuard:
    """ASGI middleware: a request whose `Host` the policy does not allow gets 403, in
    OpenAI's error shape, before any route (and /docs, /openapi.json, /health) sees it."""

    def __init__(self, app, policy: HostPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            hosts = [value for key, value in scope["headers"] if key == b"host"]
            header = hosts[0].decode("latin-1") if len(hosts) == 1 else None
            if len(hosts) > 1 or not self.policy.allows(header):
                await _refusal(header)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(header: str | None):
    from jupyter_qwen.server.errors import APIError

    shown = "several Host headers" if header is None else f"Host {header[:100]!r}"
    return APIError(403, f"this server does not answer to {shown}: it answers to loopback "
                    "names and its address; add names with allowed_hosts (--allowed-hosts)",
                    "permission_error", code="host_not_allowed").response()


# ---- other users -----------------------------------------------------------------------------

def other_logged_in_users() -> list[str]:
    """Names of the other users logged in to this machine (who can reach 127.0.0.1 too)."""
    import psutil

    try:
        me = getpass.getuser()
        users = psutil.users()
    except (OSError, KeyError, psutil.Error):
        return []
    return sorted({user.name for user in users if user.name and user.name != me})
