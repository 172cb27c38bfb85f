"""Audio decoding (`processing/audio_io.py`): only self-contained audio files reach ffmpeg, so no decode of bytes or
of a file can open a socket or another file (SDP/RTP, HLS, ffconcat), and a concat list cannot leave `path_root`;
decoding is bounded (a compressed bomb is refused from its header or stopped at the limit) and every bad array or
sampling rate is one clear error. Memory bounds are measured by benchmarks/bench_decode_limits.py, not asserted here.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

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
    target = tmp_path / f"tone.{extension}"
    subprocess.run(["sox", str(audio_dir / "tone.wav"), str(target)], check=True, capture_output=True)
    assert audio_io.audio_container(target.read_bytes()[:16]) is not None
    assert abs(len(load_audio(str(target))) / 16000 - 2.0) < 0.1


# ----------------------------------------------------------------------------- bounded decoding and arrays
@pytest.fixture(scope="module")
def flac_bomb(tmp_path_factory) -> Path:
    """20 minutes of silence at 16 kHz: a FLAC of a few dozen KB that decodes to 77 MB of float32."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.flac"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(path), "trim", "0", "1200"], check=True)
    return path


def test_compressed_bomb_is_refused_from_its_header(flac_bomb):
    assert flac_bomb.stat().st_size < 200_000
    with pytest.raises(AudioDecodeError, match=r"bomb.flac lasts 1200.0 s, over max_audio_seconds=600\."):
        load_audio(flac_bomb, max_seconds=600)


def test_soundfile_fallback_is_bounded_too(flac_bomb, monkeypatch):
    def missing(*_):
        raise ImportError("No module named 'torchcodec'")

    monkeypatch.setattr(audio_io, "_decode_with_torchcodec", missing)
    with pytest.raises(AudioDecodeError, match="lasts 1200.0 s, over max_audio_seconds=600"):
        load_audio(flac_bomb, max_seconds=600)


def strip_flac_length(source: Path, target: Path) -> Path:
    """A copy of a FLAC whose STREAMINFO says "total samples unknown" (36 bits from byte 21, low nibble, zeroed)."""
    data = bytearray(source.read_bytes())
    assert data[:4] == b"fLaC"
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    target.write_bytes(data)
    return target


def test_bomb_without_a_length_in_its_header_stops_decoding_at_the_limit(flac_bomb, tmp_path):
    from torchcodec.decoders import AudioDecoder

    bomb = strip_flac_length(flac_bomb, tmp_path / "no_length.flac")
    assert AudioDecoder(str(bomb)).metadata.duration_seconds_from_header is None
    with pytest.raises(AudioDecodeError, match=r"no_length.flac is longer than max_audio_seconds=30\."):
        load_audio(bomb, max_seconds=30)
    assert load_audio(bomb, max_seconds=1300).size == 1200 * 16000


def test_torchcodec_failure_is_not_decoded_twice(audio_dir, monkeypatch):
    """A stream torchcodec opened but could not decode is reported; soundfile never decodes it again."""
    calls = []
    monkeypatch.setattr(audio_io, "_decode_with_soundfile", lambda *args: calls.append(args))

    class Broken:
        metadata = None

        def get_samples_played_in_range(self, *args):
            raise RuntimeError("/__w/torchcodec/src/Decoder.cpp:42, This should never happen")

    monkeypatch.setattr(
        audio_io,
        "_decode_with_torchcodec",
        lambda data, rate, name, seconds: audio_io._from_decoder(Broken(), rate, name, seconds),
    )
    with pytest.raises(AudioDecodeError) as caught:
        load_audio(audio_dir / "hello.wav", max_seconds=60)
    assert calls == []
    assert ".cpp" not in str(caught.value) and "probably corrupt" in str(caught.value)


def _wav_int(dtype, scale, audio_dir):
    speech = load_audio(audio_dir / "hello.wav")
    return (speech * scale).astype(dtype), speech


ARRAY_CASES = [
    # (case, array dict, expected error text; None = decodes)
    (
        "declared at sampling_rate=1",
        {"array": np.zeros(64000, np.float32), "sampling_rate": 1},
        "sampling_rate is 1 Hz; audio is sampled at 1000 to 768000 Hz",
    ),
    (
        "declared at sampling_rate=1000",
        {"array": np.zeros(6_400_000, np.float32), "sampling_rate": 1000},
        "lasts 6400.0 s",
    ),
    ("sampling_rate 0", {"array": np.zeros(10, np.float32), "sampling_rate": 0}, "must be a positive integer"),
    ("sampling_rate -16000", {"array": np.zeros(10, np.float32), "sampling_rate": -16000}, "must be a positive"),
    ("sampling_rate '16k'", {"array": np.zeros(10, np.float32), "sampling_rate": "16k"}, "must be a number"),
    ("bool array", {"array": np.ones(100, bool), "sampling_rate": 16000}, "got dtype bool"),
    ("complex array", {"array": np.ones(100, complex), "sampling_rate": 16000}, "got dtype complex128"),
    ("object array", {"array": np.array([{}, {}], dtype=object), "sampling_rate": 16000}, "got dtype object"),
    ("string list", {"array": ["a", "b"], "sampling_rate": 16000}, "got dtype <U1"),
    ("ragged list", {"array": [[0.0, 0.1], [0.2]], "sampling_rate": 16000}, "must be rectangular"),
    ("3-D array", {"array": np.zeros((2, 2, 2), np.float32), "sampling_rate": 16000}, "got shape"),
    ("64 x 10 array", {"array": np.zeros((64, 10), np.float32), "sampling_rate": 16000}, r"shape \(64, 10\) has no"),
    ("10 x 64 array", np.zeros((10, 64), np.float32), r"shape \(10, 64\) has no channel axis"),
    ("square array", np.zeros((2, 2), np.float32), r"shape \(2, 2\) has no channel axis"),
    ("NaN samples", {"array": np.full(100, np.nan, np.float32), "sampling_rate": 16000}, "NaN or infinite"),
    ("None audio", None, "has no audio"),
]


@pytest.mark.parametrize("case, source, message", ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES])
def test_bad_arrays_are_refused_clearly(case, source, message):
    with pytest.raises(AudioDecodeError, match=message):
        load_audio(source, max_seconds=600)


def test_the_channel_axis_is_the_short_one_of_at_most_eight(audio_dir):
    """(channels, samples) and (samples, channels) give the same clip; the message of a shape that is neither says
    the rule and the fix."""
    channels = np.stack([np.full(1000, 0.2, np.float32), np.full(1000, 0.4, np.float32)])
    for layout in (channels, channels.T, torch.from_numpy(channels), {"array": channels.T, "sampling_rate": 16000}):
        np.testing.assert_allclose(load_audio(layout), np.full(1000, 0.3, np.float32), atol=1e-6)
    assert load_audio(np.zeros((8, 9), np.float32)).shape == (9,) and load_audio(np.zeros((9, 8))).shape == (9,)
    with pytest.raises(AudioDecodeError) as caught:
        load_audio(np.zeros((64, 10), np.float32))
    assert "(channels, samples) or (samples, channels)" in str(caught.value)
    assert "at most 8 channels" in str(caught.value) and "1-D array" in str(caught.value)


@pytest.mark.parametrize("dtype, scale", [(np.int16, 32767), (np.int32, 2**31 - 1), (np.int8, 127)])
def test_integer_pcm_is_scaled(audio_dir, dtype, scale):
    pcm, speech = _wav_int(dtype, scale, audio_dir)
    np.testing.assert_allclose(load_audio(pcm), speech, atol=2.0 / 127 if dtype is np.int8 else 1e-4)
    np.testing.assert_allclose(load_audio(torch.from_numpy(pcm)), load_audio(pcm))


def test_truncated_wav_warns(audio_dir, tmp_path, caplog):
    data = (audio_dir / "numbers.wav").read_bytes()
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING, logger="processing.audio_io"):
        waveform = load_audio(truncated)
    assert waveform.size > 0
    assert any("truncated.wav looks truncated: its WAV header declares" in r.getMessage() for r in caplog.records)


def test_corrupt_bytes_error_has_no_internal_paths():
    with pytest.raises(AudioDecodeError) as caught:
        load_audio(b"RIFF\x00\x00\x00\x00WAVEfmt this is not audio")
    message = str(caught.value)
    assert message.startswith("could not decode audio from audio bytes: torchcodec: ")
    assert ".cpp" not in message and "/__w/" not in message
