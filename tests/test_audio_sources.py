"""The audio source policy (`processing/audio_sources.py`): typed settings that never fail open, and one wall-clock
deadline per download that a server cannot stretch by dripping its status line and headers (loopback only)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from processing.audio_sources import AudioSourceError, AudioSourcePolicy, download


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
