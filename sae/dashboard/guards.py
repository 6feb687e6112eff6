"""What the rating server checks of a request before serving it (its target, query, JSON body and
`Host`), and the connection's reader and writer, bounded in time and size.

Each check raises `RequestError` with the HTTP status and a message that names the fix; the server
turns it into a JSON answer.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import re
import socket
import time
from typing import Optional
from urllib.parse import parse_qs, unquote

MAX_HEADER_BYTES = 32 * 1024
MAX_DEPTH = 8  # nesting of a JSON body (a rating is 2 deep)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# The page and its data come from this server only and are not embeddable by other sites.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a message that names the fix."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, headers or {}


# ---------------------------------------------------------------- checks on the request's parts


def split_target(target: str) -> tuple[str, str]:
    """(decoded path, raw query) of a request target; RequestError 400 for anything but a plain path
    of printable ASCII whose %-escapes decode to UTF-8 text without control characters."""
    if not target.startswith("/"):
        raise RequestError(400, "the request target must be a path starting with '/'")
    if any(not 0x21 <= ord(c) <= 0x7E for c in target):
        raise RequestError(400, "the request target holds a byte not allowed in a URL (a control byte, space or non-ASCII)")
    raw_path, _, query = target.partition("?")
    raw_path = raw_path.partition("#")[0]
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw_path):
        raise RequestError(400, "the path holds a '%' that is not followed by two hex digits")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise RequestError(400, "the path's %-escapes are not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise RequestError(400, "the path holds a control character (such as NUL)")
    return path, query


def parse_query(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """`name=value` pairs, each name at most once and among `allowed`; RequestError 400 otherwise."""
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=len(allowed) + 1)
    except ValueError:
        raise RequestError(400, "the query string is malformed: give name=value pairs joined by '&', %-encoded UTF-8") from None
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise RequestError(400, f"unknown query parameter {unknown[0][:40]!r}: this endpoint takes {list(allowed) or 'none'}")
    repeated = [k for k, v in fields.items() if len(v) > 1]
    if repeated:
        raise RequestError(400, f"give {repeated[0]} once")
    return {k: v[0] for k, v in fields.items()}


def nesting_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (measured before parsing it)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_text(value) -> None:
    """Strings must be Unicode text that UTF-8 can store: a lone surrogate (\\ud800) cannot."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(400, "the body holds a string with a lone surrogate escape (such as \\ud800)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_text(v)
    elif isinstance(value, list):
        for v in value:
            _check_text(v)


def json_body_length(headers, max_body: int) -> int:
    """The length of a JSON body from its headers: one Content-Length of 1..max_body bytes, the type
    application/json in UTF-8, no Transfer-Encoding."""
    media, _, params = (headers.get("Content-Type") or "").partition(";")
    if media.strip().lower() != "application/json":
        raise RequestError(415, "send JSON with Content-Type: application/json")
    charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", params, re.IGNORECASE)
    if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
        raise RequestError(415, "send the JSON as UTF-8")
    if headers.get("Transfer-Encoding"):
        raise RequestError(411, "send the body with a Content-Length (no Transfer-Encoding)")
    lengths = headers.get_all("Content-Length") or []
    if len(lengths) != 1 or not re.fullmatch(r"\s*[0-9]{1,12}\s*", lengths[0]):
        raise RequestError(411, "a Content-Length header is required (one, a number of bytes)")
    length = int(lengths[0])
    if not 0 < length <= max_body:
        raise RequestError(413, f"the body must be 1..{max_body} bytes")
    return length


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object; RequestError 400 naming what is wrong otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not valid JSON: it is not UTF-8 text") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise RequestError(400, f"the body is not valid JSON for this server: nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN/Infinity, integers of over 4,300 digits
        raise RequestError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"the body must be a JSON object, not {type(value).__name__}")
    _check_text(value)
    return value


class HostCheck:
    """Which `Host` headers name this server: its bound address and port, with the loopback aliases
    when it is bound to loopback; on a wildcard address (0.0.0.0, ::) also any IP literal and this
    machine's names; and the `extra` names ("name" on the bound port, or "name:port", e.g. the local
    end of an SSH tunnel). A DNS name is allowed only when listed: a rebinding attacker's never is."""

    def __init__(self, bound_host: str, port: int, extra: tuple[str, ...] = ()):
        self.port = int(port)
        names = {bracket(bound_host).lower()}
        self.wildcard = False
        try:
            ip = ipaddress.ip_address(bound_host)
            if ip.is_loopback:
                names.update(LOOPBACK_NAMES)
            self.wildcard = ip.is_unspecified
        except ValueError:
            if bound_host.lower() == "localhost":
                names.update(LOOPBACK_NAMES)
        if self.wildcard:
            names.update(LOOPBACK_NAMES)
            names.update(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)
        self.allowed = {(n, self.port) for n in names}
        for entry in extra:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"allowed host {entry!r}: give a name or address, optionally with :port")
            self.allowed.add((parsed[0], parsed[1] or self.port))

    def allows(self, header: str) -> bool:
        parsed = split_host(header)
        if parsed is None:
            return False
        name, port = parsed[0], parsed[1] or 80
        return (name, port) in self.allowed or (self.wildcard and port == self.port and is_ip_literal(name))

    def describe(self) -> str:
        shown = sorted(f"{n}:{p}" for n, p in self.allowed)
        return ", ".join(shown) + (f" or any IP address of this machine on port {self.port}" if self.wildcard else "")


def split_host(value: str) -> Optional[tuple[str, int]]:
    """("name", port or 0) of a Host header value; None when it is not one."""
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?", value.strip())
    if not m:
        return None
    return m.group(1).lower(), int(m.group(2) or 0)


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- the connection's reader and writer


class DeadlineReader(io.RawIOBase):
    """The connection's bytes, every read bounded by the request's deadline: a client that sends its
    request slowly, or part of it and then nothing, is cut off when the deadline passes."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock, self.timeout, self.deadline = sock, timeout, time.monotonic() + timeout

    def start(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buf)
        finally:
            self.sock.settimeout(self.timeout)  # writes get the plain timeout


class SocketWriter(io.BufferedIOBase):
    """Writes that send every byte (or time out): the answer never goes out half-written silently."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes


class HeaderBudget:
    """The reader that `parse_request` reads header lines from, refusing more than `budget` bytes."""

    def __init__(self, fp, budget: int):
        self.fp, self.left = fp, budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self.left + 1 if limit is None or limit < 0 else min(limit, self.left + 1)
        line = self.fp.readline(cap)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong(f"headers of more than {MAX_HEADER_BYTES} bytes")
        return line
