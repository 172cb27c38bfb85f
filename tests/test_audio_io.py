"""Audio decoding (`processing/audio_io.py`): only self-contained audio files reach ffmpeg, so no decode of bytes or
of a file can open a socket or another file (SDP/RTP, HLS, ffconcat), and a concat list cannot leave `path_root`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile

from processing import AudioDecodeError, audio_io, load_audio
from processing.audio_sources import AudioSourcePolicy

SDP = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"
HLS = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n"
FFCONCAT = b"ffconcat version 1.0\nfile 'outside.wav'\n"


@pytest.fixture()
def no_decoder(monkeypatch):
    """Fail the test if anything reaches a decoder (ffmpeg would open the sockets and files)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a playlist or stream description reached a decoder")

    monkeypatch.setattr(audio_io, "_decode_with_torchcodec", refuse)
    monkeypatch.setattr(audio_io, "_decode_with_soundfile", refuse)


@pytest.mark.parametrize(
    "data", [SDP, HLS, FFCONCAT, b"rtsp://127.0.0.1/stream\n"], ids=["sdp", "hls", "ffconcat", "rtsp"]
)
def test_stream_descriptions_and_playlists_in_bytes_never_reach_ffmpeg(no_decoder, data):
    untrusted = AudioSourcePolicy.for_input(trusted_input=False)
    with pytest.raises(AudioDecodeError, match="not a recognised audio file.*HLS, ffconcat, SDP"):
        load_audio(data, policy=untrusted)


def test_a_concat_list_inside_the_root_cannot_reach_a_file_outside_it(tmp_path, no_decoder):
    root, outside = tmp_path / "root", tmp_path / "secret.wav"
    root.mkdir()
    soundfile.write(outside, np.zeros(1600, np.float32), 16000)
    os.symlink(outside, root / "inside.wav")  # a link inside the root to a file outside it
    (root / "list.ffconcat").write_bytes(b"ffconcat version 1.0\nfile 'inside.wav'\n")
    policy = AudioSourcePolicy(path_root=str(root))
    with pytest.raises(AudioDecodeError, match="list.ffconcat is not a recognised audio file"):
        load_audio(str(root / "list.ffconcat"), policy=policy)


@pytest.mark.parametrize("extension", ["wav", "flac", "mp3", "ogg"])
def test_audio_files_of_every_common_format_are_recognised(audio_dir, tmp_path, extension):
    import subprocess

    target = tmp_path / f"tone.{extension}"
    subprocess.run(["sox", str(audio_dir / "tone.wav"), str(target)], check=True, capture_output=True)
    assert audio_io.audio_container(target.read_bytes()[:16]) is not None
    assert abs(len(load_audio(str(target))) / 16000 - 2.0) < 0.1
