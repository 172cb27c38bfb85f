"""Where audio may come from: the audio source policy, local paths inside a root, bounded URL downloads.

A processor that runs on its own user's files (the default, `trusted_input=True`) reads any local path and any
http(s) URL. A processor behind a server (`trusted_input=False`) reads neither unless told to: local paths only
inside `path_root` (after following symlinks), URLs only when `allow_urls` is set, and then never to private,
loopback or link-local addresses unless the host is listed in `allowed_hosts`. Every download, in both modes,
has a byte cap and a total deadline, and each redirect is checked again like the first URL.
"""

import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, fields, replace

URL_PREFIXES = ("http://", "https://")
READ_CHUNK = 1 << 16
REDIRECT_CODES = (301, 302, 303, 307, 308)


class AudioSourceError(ValueError):
    """An audio source the policy refuses, or a download that failed; the message names the path or URL."""


@dataclass(frozen=True)
class AudioSourcePolicy:
    """Which audio sources a processor reads.

    Args:
        allow_paths: read local file paths (inside `path_root` when it is set).
        allow_urls: fetch http(s) URLs.
        allow_bytes: decode raw bytes (and `{"bytes": ...}` dicts).
        path_root: local paths must resolve inside this folder, symlinks followed.
        url_schemes: URL schemes accepted, for the first URL and every redirect.
        allowed_hosts: when non-empty, only these hosts (`"host"`, `"host:port"` or `".suffix"`); a listed host is
            fetched even when it resolves to a private address.
        denied_hosts: hosts never fetched (same forms).
        allow_private_hosts: fetch hosts resolving to private, loopback, link-local or reserved addresses.
        max_download_bytes: largest body read from a URL.
        download_timeout_s: total seconds for a download: connection, redirects and body together.
        max_redirects: redirects followed per download.
    """

    allow_paths: bool = True
    allow_urls: bool = True
    allow_bytes: bool = True
    path_root: str | None = None
    url_schemes: tuple[str, ...] = ("http", "https")
    allowed_hosts: tuple[str, ...] = ()
    denied_hosts: tuple[str, ...] = ()
    allow_private_hosts: bool = True
    max_download_bytes: int = 512 * 2**20
    download_timeout_s: float = 300.0
    max_redirects: int = 5

    @classmethod
    def for_input(cls, trusted_input: bool = True, overrides: "dict | AudioSourcePolicy | None" = None):
        """The defaults of a trust level, updated with `overrides` (a dict of field values, or a policy)."""
        if isinstance(overrides, AudioSourcePolicy):
            return overrides
        base = cls() if trusted_input else cls.untrusted_defaults()
        return base.updated(overrides or {})

    @classmethod
    def untrusted_defaults(cls) -> "AudioSourcePolicy":
        """What a server should start from: arrays and bytes only; paths and URLs are opt-in."""
        return cls(
            allow_paths=False,
            allow_urls=False,
            allow_private_hosts=False,
            max_download_bytes=50 * 2**20,
            download_timeout_s=30.0,
        )

    def updated(self, overrides: dict) -> "AudioSourcePolicy":
        """This policy with `overrides`; an unknown setting or a value of the wrong type raises (never fails open:
        `"false"` is not False, `"127.0.0.1"` is not a list of hosts)."""
        if not isinstance(overrides, dict):
            raise ValueError(f"an audio policy must be a dict of settings; got {type(overrides).__name__}.")
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"unknown audio policy setting(s) {unknown}; known: {sorted(known)}")
        checked = {name: _checked_setting(name, getattr(self, name), value) for name, value in overrides.items()}
        return replace(self, **checked)

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def _checked_setting(name: str, default, value):
    """`value` for the setting `name`, of the type of its default: bools are bools, numbers are positive numbers,
    host and scheme lists are lists of strings, `path_root` a string or None."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false (a JSON boolean, not a string)"
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
        expected = "a list of strings"
        value = tuple(value) if ok else value
    elif name == "path_root":
        ok, expected = value is None or isinstance(value, (str, os.PathLike)), "a folder path or null"
    else:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok, expected = number and value >= 0, "a non-negative number"
    if not ok:
        raise ValueError(f"audio policy setting {name!r} must be {expected}; got {value!r}.")
    return value


# ----------------------------------------------------------------------------- local paths
def checked_local_path(path: str, policy: AudioSourcePolicy) -> str:
    """`path` with symlinks resolved, if the policy lets it be read; refusals never say whether the file exists."""
    if not policy.allow_paths:
        raise AudioSourceError(
            f"local audio paths are not allowed by this processor's audio policy (trusted_input=False); got {path!r}. "
            "Send the audio as bytes or an array, or set audio_policy={'allow_paths': True, 'path_root': ...}."
        )
    if policy.path_root is None:
        return path
    root = os.path.realpath(policy.path_root)
    resolved = os.path.realpath(path if os.path.isabs(path) else os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        raise AudioSourceError(f"audio path {path!r} is outside the allowed audio root {policy.path_root!r}.")
    return resolved


# ----------------------------------------------------------------------------- URLs
def is_url(value: str) -> bool:
    return "://" in value[:16]


def _host_matches(host: str, port: int, entries: tuple[str, ...]) -> bool:
    for entry in entries:
        entry = entry.lower()
        if entry.startswith(".") and (host.endswith(entry) or host == entry[1:]):
            return True
        if entry in (host, f"{host}:{port}"):
            return True
    return False


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def _checked_target(url: str, policy: AudioSourcePolicy, deadline: float) -> tuple[urllib.parse.SplitResult, str]:
    """(parsed URL, the IP address to connect to), or AudioSourceError saying which rule refused it."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in policy.url_schemes:
        raise AudioSourceError(f"audio URL {url!r}: scheme {scheme!r} is not allowed (allowed: {policy.url_schemes}).")
    host = (parsed.hostname or "").lower()
    if not host:
        raise AudioSourceError(f"audio URL {url!r} has no host.")
    try:
        port = parsed.port or (443 if scheme == "https" else 80)
    except ValueError as error:
        raise AudioSourceError(f"audio URL {url!r} has a bad port ({error}).") from None
    if _host_matches(host, port, policy.denied_hosts):
        raise AudioSourceError(f"audio URL {url!r}: host {host!r} is denied by the audio policy.")
    listed = _host_matches(host, port, policy.allowed_hosts)
    if policy.allowed_hosts and not listed:
        raise AudioSourceError(f"audio URL {url!r}: host {host}:{port} is not in the audio policy's allowed_hosts.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise AudioSourceError(f"could not download audio from {url}: cannot resolve {host!r} ({error}).") from None
    addresses = [info[4][0] for info in infos]
    if not (listed or policy.allow_private_hosts) and not all(_is_public(a) for a in addresses):
        raise AudioSourceError(
            f"audio URL {url!r}: host {host!r} resolves to a private, loopback or link-local address, which the "
            "audio policy does not allow (list it in allowed_hosts to fetch it anyway)."
        )
    _remaining(deadline, url, policy)
    return parsed, addresses[0]


def _remaining(deadline: float, url: str, policy: AudioSourcePolicy) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _deadline_error(url, policy)
    return left


def _deadline_error(url: str, policy: AudioSourcePolicy) -> AudioSourceError:
    return AudioSourceError(
        f"could not download audio from {url}: took longer than the download deadline (the audio policy's "
        f"download_timeout_s={policy.download_timeout_s:g} s); raise download_timeout_s (audio_policy="
        "{'download_timeout_s': ...}) for a slow server, or fetch the file yourself and pass its path."
    )


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address the policy checked, not to whatever the name resolves to a moment later."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def connect(self):
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def download(url: str, policy: AudioSourcePolicy) -> bytes:
    """The body of `url`, following redirects that the policy allows, within its byte cap and total deadline."""
    if not policy.allow_urls:
        raise AudioSourceError(
            f"audio URLs are not allowed by this processor's audio policy; got {url!r}. Send the audio as bytes, or "
            "set audio_policy={'allow_urls': True}."
        )
    deadline = time.monotonic() + policy.download_timeout_s
    current = url
    for _ in range(policy.max_redirects + 1):
        try:
            parsed, address = _checked_target(current, policy, deadline)
        except AudioSourceError as error:
            raise AudioSourceError(f"{error} (redirected from {url})" if current != url else str(error)) from None
        connection_class = _PinnedHTTPSConnection if parsed.scheme.lower() == "https" else _PinnedHTTPConnection
        connection = connection_class(parsed.hostname, parsed.port, address, _remaining(deadline, url, policy))
        watchdog = _DeadlineWatchdog(connection, deadline)
        try:
            target = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
            connection.request("GET", target, headers={"User-Agent": "desta-audio", "Accept-Encoding": "identity"})
            sock = connection.sock  # http.client drops its reference once a response says it will close
            response = connection.getresponse()
            if response.status in REDIRECT_CODES and response.getheader("Location"):
                current = urllib.parse.urljoin(current, response.getheader("Location"))
                continue
            if response.status != 200:
                raise AudioSourceError(
                    f"could not download audio from {url}: HTTP {response.status} {response.reason}."
                )
            return _read_body(response, sock, url, policy, deadline, watchdog)
        except (OSError, http.client.HTTPException) as error:
            if watchdog.fired.is_set():  # the watchdog's abort reads as the deadline it is
                raise _deadline_error(url, policy) from None
            _remaining(deadline, url, policy)
            raise AudioSourceError(f"could not download audio from {url}: {error or type(error).__name__}.") from None
        finally:
            watchdog.cancel()
            connection.close()
    raise AudioSourceError(f"could not download audio from {url}: more than {policy.max_redirects} redirects.")


class _DeadlineWatchdog:
    """Shuts the connection's socket at `deadline`, so one wall-clock deadline covers connecting, the TLS handshake,
    the status line and headers (read by `getresponse()` under a per-read timeout a server can drip under) and the
    body. A body read it cuts short ends like a finished one (http.client returns no error for a body short of its
    Content-Length); `fired` tells the two apart, so cut bytes are never taken for the download."""

    def __init__(self, connection, deadline: float):
        self.connection = connection
        self.fired = threading.Event()
        self.timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.abort)
        self.timer.daemon = True
        self.timer.start()

    def abort(self) -> None:
        self.fired.set()
        sock = self.connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def cancel(self) -> None:
        self.timer.cancel()


def _read_body(response, sock, url: str, policy: AudioSourcePolicy, deadline: float, watchdog) -> bytes:
    """Read at most `max_download_bytes`, one socket read at a time so the total deadline holds against a drip;
    a body that ends short of its Content-Length (cut at the deadline, or a closed connection) is an error."""
    declared = response.getheader("Content-Length")
    declared = int(declared) if declared and declared.isdigit() else None
    if declared is not None and declared > policy.max_download_bytes:
        raise AudioSourceError(
            f"audio URL {url} declares {declared} bytes, over the policy's max_download_bytes="
            f"{policy.max_download_bytes}."
        )
    body = bytearray()
    while True:
        sock.settimeout(_remaining(deadline, url, policy))
        try:
            chunk = response.read1(READ_CHUNK)
        except TimeoutError:
            _remaining(deadline, url, policy)
            raise
        if not chunk:
            return _whole_body(body, declared, url, policy, watchdog)
        body += chunk
        if len(body) > policy.max_download_bytes:
            raise AudioSourceError(
                f"audio URL {url} sent more than the policy's max_download_bytes={policy.max_download_bytes}."
            )
        _remaining(deadline, url, policy)


def _whole_body(body: bytearray, declared: int | None, url: str, policy: AudioSourcePolicy, watchdog) -> bytes:
    if watchdog.fired.is_set():
        raise _deadline_error(url, policy)
    if declared is not None and len(body) < declared:
        raise AudioSourceError(
            f"could not download audio from {url}: the server closed the connection after {len(body)} of the "
            f"{declared} bytes it declared; try again, or fetch the file yourself and pass its path."
        )
    return bytes(body)
