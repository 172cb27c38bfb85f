"""The audio source policy (`processing/audio_sources.py`): typed settings that never fail open, and one wall-clock
deadline per download that a server cannot stretch by dripping its status line and headers (loopback only).

URL attacks use real loopback HTTP servers started here (redirects to another port, a slow drip, an endless body, a
declared oversized body); path attacks a symlink escaping an audio root. Each ends in one clear error.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
from conftest import system_chat

from processing import DestaProcessor, load_audio
from processing.audio_sources import AudioSourceError, AudioSourcePolicy, download

UNTRUSTED = AudioSourcePolicy.for_input(trusted_input=False)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"allow_urls": "false"}, "'allow_urls' must be true or false"),
        ({"denied_hosts": "127.0.0.1"}, "'denied_hosts' must be a list of strings"),
        ({"allowed_hosts": [1, 2]}, "'allowed_hosts' must be a list of strings"),
        ({"download_timeout_s": "3"}, "'download_timeout_s' must be a non-negative number"),
        ({"max_download_bytes": -1}, "'max_download_bytes' must be a non-negative number"),
        ({"path_root": 5}, "'path_root' must be a folder path or null"),
    ],
)
def test_policy_values_of_the_wrong_type_raise_instead_of_failing_open(overrides, named):
    with pytest.raises(ValueError, match=named):
        AudioSourcePolicy.for_input(trusted_input=False, overrides=overrides)


def test_policy_lists_are_taken_as_tuples_and_a_non_dict_is_refused():
    policy = AudioSourcePolicy.for_input(False, {"denied_hosts": ["127.0.0.1"], "allow_urls": True})
    assert policy.denied_hosts == ("127.0.0.1",) and policy.allow_urls is True
    with pytest.raises(ValueError, match="must be a dict of settings; got list"):
        AudioSourcePolicy.for_input(False, [1, 2])


def _header_drip_server(seconds: float) -> tuple[socket.socket, threading.Event]:
    """A loopback server that answers every request with its status line one byte every 0.25 s for `seconds`."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            for byte in b"HTTP/1.0 200 OK\r\nContent-Type: audio/wav\r\nX-Padding: " + b"a" * 200:
                if stop.wait(0.25) or time.monotonic() > started + seconds:
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    started = time.monotonic()
    threading.Thread(target=serve, daemon=True).start()
    return listener, stop


def test_the_download_deadline_covers_a_dripped_status_line_and_headers():
    listener, stop = _header_drip_server(seconds=30)
    port = listener.getsockname()[1]
    policy = AudioSourcePolicy(download_timeout_s=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(AudioSourceError, match="took longer than the download deadline"):
            download(f"http://127.0.0.1:{port}/clip.wav", policy)
    finally:
        stop.set()
        listener.close()
    # The drip would last 30 s (one byte per 0.25 s is never a per-read timeout); the deadline ends it near 1.5 s.
    assert time.monotonic() - started < 10


# ----------------------------------------------------------------------------- loopback servers
class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.routes[self.path](self)

    def log_message(self, *args):
        pass


def _serve(routes: dict) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _send(handler, status: int, body: bytes = b"", headers: dict | None = None) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    if "Content-Length" not in (headers or {}):
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _drip(handler) -> None:
    """One byte every 0.3 s, for at most 20 s: a per-read timeout never fires."""
    handler.send_response(200)
    handler.end_headers()
    for _ in range(60):
        try:
            handler.wfile.write(b"R")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.3)


def _zeros(handler) -> None:
    """An HTTP/1.1 body of 25,600 declared bytes sent 64 zero bytes every 0.05 s: still coming at the deadline, on a
    kept-alive connection whose socket the deadline's watchdog shuts."""
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Content-Length", str(64 * 400))
    handler.end_headers()
    for _ in range(400):
        try:
            handler.wfile.write(bytes(64))
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.05)


def _endless(handler) -> None:
    handler.send_response(200)
    handler.end_headers()
    block = bytes(1 << 16)
    for _ in range(10_000):
        try:
            handler.wfile.write(block)
        except OSError:
            return


@pytest.fixture(scope="module")
def servers(audio_dir):
    """Two loopback servers: `inner` (another port, standing for an internal service) and `outer`."""
    wav = (audio_dir / "hello.wav").read_bytes()
    inner = _serve({"/secret.wav": lambda h: _send(h, 200, wav)})
    inner_url = f"http://127.0.0.1:{inner.server_address[1]}"
    outer = _serve(
        {
            "/ok.wav": lambda h: _send(h, 200, wav),
            "/redirect": lambda h: _send(h, 302, headers={"Location": f"{inner_url}/secret.wav"}),
            "/to-file": lambda h: _send(h, 302, headers={"Location": "file:///etc/passwd"}),
            "/loop": lambda h: _send(h, 302, headers={"Location": "/loop"}),
            "/drip": _drip,
            "/zeros": _zeros,
            "/short": lambda h: _send(h, 200, b"RIFF" + bytes(60), headers={"Content-Length": "1000"}),
            "/endless": _endless,
            "/big": lambda h: _send(h, 200, b"RIFF", headers={"Content-Length": str(10**10)}),
            "/missing": lambda h: _send(h, 404),
        }
    )
    outer_port = outer.server_address[1]
    yield {"outer": f"http://127.0.0.1:{outer_port}", "outer_host": f"127.0.0.1:{outer_port}", "inner": inner_url}
    outer.shutdown()
    inner.shutdown()


def _outer_only(servers, **settings) -> AudioSourcePolicy:
    """Untrusted input with URLs on and only the outer server listed (as a server would list a media host)."""
    return UNTRUSTED.updated({"allow_urls": True, "allowed_hosts": [servers["outer_host"]], **settings})


# ----------------------------------------------------------------------------- security: URLs
URL_CASES = [
    # (case, path on the outer server, policy settings over _outer_only, expected error text)
    ("redirect to another port is re-checked", "/redirect", {}, "is not in the audio policy's allowed_hosts"),
    ("redirect to file:// is refused", "/to-file", {}, "scheme 'file' is not allowed"),
    ("redirect loop stops", "/loop", {"max_redirects": 3}, "more than 3 redirects"),
    ("slow drip hits the total deadline", "/drip", {"download_timeout_s": 1.5}, "longer than the download deadline"),
    (
        "body cut at the deadline is never decoded",
        "/zeros",
        {"download_timeout_s": 1.0},
        r"took longer than the download deadline \(the audio policy's download_timeout_s=1 s\); raise",
    ),
    ("body short of its length is refused", "/short", {}, "closed the connection after 64 of the 1000 bytes"),
    ("endless body hits the byte cap", "/endless", {"max_download_bytes": 2_000_000}, "sent more than"),
    ("declared oversized body refused", "/big", {"max_download_bytes": 2_000_000}, "declares 10000000000 bytes"),
    ("HTTP error names the URL", "/missing", {}, "HTTP 404"),
]


@pytest.mark.parametrize("case, path, settings, message", URL_CASES, ids=[c[0] for c in URL_CASES])
def test_url_attacks_end_in_one_clear_error(servers, case, path, settings, message):
    url = servers["outer"] + path
    started = time.monotonic()
    with pytest.raises(AudioSourceError, match=message) as caught:
        load_audio(url, policy=_outer_only(servers, **settings))
    assert url in str(caught.value)
    assert time.monotonic() - started < 10


def test_a_body_cut_at_the_deadline_is_never_decoded(servers, monkeypatch):
    """The deadline's watchdog and the socket's own timeout end a dripping body at the same moment; when the watchdog
    wins, the read sees an end of stream. Those cut bytes must not reach the format check ("not a recognised audio
    file"): the error is the deadline, with the URL and the setting to raise. The watchdog is made to win here."""
    import processing.audio_sources as sources

    make_watchdog = sources._DeadlineWatchdog
    monkeypatch.setattr(
        sources, "_DeadlineWatchdog", lambda connection, deadline: make_watchdog(connection, deadline - 0.5)
    )
    url = servers["outer"] + "/zeros"
    with pytest.raises(AudioSourceError) as caught:
        load_audio(url, policy=_outer_only(servers, download_timeout_s=1.5))
    message = str(caught.value)
    assert message.startswith(f"could not download audio from {url}: took longer than the download deadline"), message
    assert "download_timeout_s=1.5 s" in message


def test_listed_host_is_fetched_and_the_redirect_target_is_not(servers, audio_dir):
    np.testing.assert_array_equal(
        load_audio(servers["outer"] + "/ok.wav", policy=_outer_only(servers)), load_audio(audio_dir / "hello.wav")
    )
    trusted = AudioSourcePolicy()  # the local-use default follows the same redirect
    assert load_audio(servers["outer"] + "/redirect", policy=trusted).size > 0


@pytest.mark.parametrize(
    "settings, url_key, message",
    [
        ({}, "inner", "audio URLs are not allowed"),
        ({"allow_urls": True}, "inner", "private, loopback or link-local"),
        ({"allow_urls": True, "denied_hosts": ["127.0.0.1"]}, "inner", "denied by the audio policy"),
    ],
    ids=["urls off when untrusted", "loopback denied when urls on", "denied host"],
)
def test_untrusted_urls(servers, settings, url_key, message):
    with pytest.raises(AudioSourceError, match=message):
        load_audio(servers[url_key] + "/secret.wav", policy=UNTRUSTED.updated(settings))


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://169.254.169.254/latest/meta-data", "private, loopback or link-local"),
        ("http://[::1]:9/x.wav", "private, loopback or link-local"),
        ("http://10.0.0.1/x.wav", "private, loopback or link-local"),
        ("ftp://example.org/x.wav", "scheme 'ftp' is not allowed"),
        ("http://no-such-host.invalid/x.wav", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_internal_addresses_and_schemes_are_refused(url, message):
    with pytest.raises(AudioSourceError, match=message) as caught:
        load_audio(url, policy=UNTRUSTED.updated({"allow_urls": True}))
    assert url in str(caught.value)


# ----------------------------------------------------------------------------- security: local paths
@pytest.fixture()
def audio_root(tmp_path, audio_dir):
    root = tmp_path / "served"
    root.mkdir()
    (root / "clip.wav").write_bytes((audio_dir / "hello.wav").read_bytes())
    outside = tmp_path / "private.wav"
    outside.write_bytes((audio_dir / "tone.wav").read_bytes())
    (root / "escape.wav").symlink_to(outside)
    (root / "inside_link.wav").symlink_to(root / "clip.wav")
    return root


@pytest.mark.parametrize(
    "name, message",
    [
        ("escape.wav", "is outside the allowed audio root"),
        ("../private.wav", "is outside the allowed audio root"),
        ("/etc/passwd", "is outside the allowed audio root"),
        ("../does-not-exist.wav", "is outside the allowed audio root"),  # never says whether it exists
    ],
)
def test_paths_must_resolve_inside_the_root(audio_root, name, message):
    policy = UNTRUSTED.updated({"allow_paths": True, "path_root": str(audio_root)})
    with pytest.raises(AudioSourceError, match=message):
        load_audio(name if name.startswith("/") else str(audio_root / name), policy=policy)


def test_paths_inside_the_root_are_read(audio_root, audio_dir):
    policy = UNTRUSTED.updated({"allow_paths": True, "path_root": str(audio_root)})
    expected = load_audio(audio_dir / "hello.wav")
    np.testing.assert_array_equal(load_audio("clip.wav", policy=policy), expected)  # relative to the root
    np.testing.assert_array_equal(load_audio(str(audio_root / "inside_link.wav"), policy=policy), expected)


def test_untrusted_processor_refuses_paths_and_saves_its_policy(tiny_parts, audio_dir, tmp_path):
    _, trusted = tiny_parts
    processor = DestaProcessor(
        trusted.feature_extractor,
        trusted.tokenizer,
        audio_token=trusted.audio_token,
        num_audio_queries=trusted.num_audio_queries,
        trusted_input=False,
        audio_policy={"max_download_bytes": 1000},
    )
    chat = system_chat([{"type": "audio", "path": str(audio_dir / "hello.wav"), "transcript": ""}])
    with pytest.raises(AudioSourceError, match="local audio paths are not allowed"):
        processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    allowed = processor.apply_chat_template(
        chat, audio_policy={"allow_paths": True}, add_generation_prompt=True, tokenize=True, return_dict=True
    )  # a per-call override
    assert torch.equal(
        allowed["input_features"],
        trusted.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_features"
        ],
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["trusted_input"] is False and saved["audio_policy"] == {"max_download_bytes": 1000}
    reloaded = DestaProcessor.from_pretrained(tmp_path)
    assert reloaded.source_policy() == processor.source_policy() == UNTRUSTED.updated({"max_download_bytes": 1000})
    trusted_again = DestaProcessor.from_pretrained(tmp_path, trusted_input=True, audio_policy={})
    assert trusted_again.source_policy() == AudioSourcePolicy()
    with pytest.raises(ValueError, match=r"unknown audio policy setting\(s\) \['max_bytes'\]"):
        reloaded.source_policy({"max_bytes": 5})
    array_chat = system_chat([{"type": "audio", "array": np.zeros(16000, np.float32), "sampling_rate": 16000}])
    assert (
        processor.apply_chat_template(array_chat, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_features"
        ].shape[0]
        == 1
    )  # arrays always allowed


def test_bytes_can_be_switched_off(audio_dir):
    with pytest.raises(AudioSourceError, match="raw audio bytes are not allowed"):
        load_audio((audio_dir / "hello.wav").read_bytes(), policy=AudioSourcePolicy(allow_bytes=False))
