"""Audio decoding to 16 kHz mono float32, bounded in length, with errors that name the problem.

torchcodec (what transformers and datasets use; needs ffmpeg) decodes first; soundfile + soxr is the
fallback for what torchcodec cannot open (a file it opened is never decoded a second time). Both are optional
imports so the processor still loads where only one of them is installed.

Decoding is bounded: the duration in the container/stream header is checked against `max_seconds` before any
sample is decoded, and decoding itself stops at `max_seconds` (a header can lie), so a tiny, highly
compressed file cannot expand into gigabytes. Arrays are checked the same way from their declared rate.
Where audio may come from (paths, URLs, bytes) is the `AudioSourcePolicy`'s business (`audio_sources.py`).
"""

import io
import logging
import os
import re
import struct

import numpy as np

from .audio_sources import AudioSourceError, AudioSourcePolicy, checked_local_path, download, is_url

logger = logging.getLogger(__name__)

TARGET_SAMPLING_RATE = 16000
AUDIO_SOURCE_KEYS = ("path", "audio", "url", "array")
# Decoded audio shorter than its header's duration by more than this is reported as truncated.
TRUNCATION_TOLERANCE_S = 0.05
# Sampling rates an array may declare: telephone audio to the highest studio rates.
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 1000, 768000
# A 2-D array's channel axis holds at most this many channels (7.1 surround), so it is never mistaken for time.
MAX_ARRAY_CHANNELS = 8
INTEGER_SCALES = {np.dtype(np.int8): 2**7, np.dtype(np.int16): 2**15, np.dtype(np.int32): 2**31}
_INTERNAL_LOCATION = re.compile(r"(?:[\w.]+, )?\S*/\S+\.(?:cpp|cc|h|hpp|py):\d+,?\s*")
DEFAULT_POLICY = AudioSourcePolicy()
# What bytes and files may be: self-contained audio files, recognised by their first bytes, before any decoder sees
# them. ffmpeg's playlist, concat and session demuxers (HLS, ffconcat, SDP/RTP, RTSP descriptions) are text that makes
# it open other files or sockets (a concat list can name a file outside `path_root`; an SDP binds UDP ports), and
# none of them starts with one of these signatures. (offset, signature, name)
AUDIO_SIGNATURES = (
    (0, b"RIFF", "WAV"),
    (0, b"RF64", "WAV"),
    (0, b"fLaC", "FLAC"),
    (0, b"OggS", "OGG/Opus"),
    (0, b"ID3", "MP3"),
    (4, b"ftyp", "MP4/M4A"),
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (0, b"FORM", "AIFF"),
    (0, b"caff", "CAF"),
    (0, b".snd", "AU"),
    (0, b"#!AMR", "AMR"),
    (0, b"\x30\x26\xb2\x75", "WMA"),
    (0, b"wvpk", "WavPack"),
    (0, b"MAC ", "APE"),
)


class AudioDecodeError(ValueError):
    """Raised for audio that exists but cannot be decoded, or decodes to nothing."""


class AudioTooLongError(AudioDecodeError):
    """Audio longer than the caller's `max_seconds`, found out before it was decoded in full."""


class _CannotOpen(Exception):
    """torchcodec could not open the stream at all: the fallback decoder may try."""


def load_audio(
    source,
    sampling_rate: int = TARGET_SAMPLING_RATE,
    max_seconds: float | None = None,
    policy: AudioSourcePolicy | None = None,
) -> np.ndarray:
    """Decode `source` to a 1-D float32 array at `sampling_rate` Hz, averaging channels.

    `source` may be a local path, an http(s) URL, raw bytes, a numpy array or torch tensor (taken to be at
    `sampling_rate` already), a `{"array", "sampling_rate"}` or `{"path"|"bytes"}` dict (what `datasets`
    yields), or a torchcodec `AudioDecoder` (what `datasets.Audio` yields in datasets >= 4). A 2-D array is
    (channels, samples) or (samples, channels), told apart by `channel_axis`, and its channels are averaged.
    Paths, URLs and bytes must be allowed by `policy` (default: everything, for local use). Audio over
    `max_seconds` raises `AudioTooLongError` before it is decoded in full.
    """
    policy = policy or DEFAULT_POLICY
    if isinstance(source, dict):
        waveform = _load_from_dict(source, sampling_rate, max_seconds, policy)
        name = source.get("path") or "audio dict"
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        waveform = _load_from_path_or_url(name, sampling_rate, max_seconds, policy)
    elif isinstance(source, (bytes, bytearray)):
        waveform = _decode_bytes(_checked_bytes(source, policy), sampling_rate, "audio bytes", max_seconds)
        name = "audio bytes"
    elif hasattr(source, "get_all_samples"):
        name = "AudioDecoder"
        waveform = _from_decoder(source, sampling_rate, name, max_seconds)
    elif source is None:
        raise AudioDecodeError("an audio item has no audio (got None).")
    else:
        name = "audio array"
        waveform = _checked_array(to_mono(as_float_array(source)), sampling_rate, sampling_rate, max_seconds)
    if waveform.size == 0:
        raise AudioDecodeError(f"{name} is an empty clip (0 samples).")
    if not np.all(np.isfinite(waveform)):
        raise AudioDecodeError(f"{name} contains NaN or infinite samples.")
    return waveform


def as_float_array(array) -> np.ndarray:
    """A float32 array from floats, or from integer PCM scaled to [-1, 1]; bool, complex and objects refused."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    try:
        array = np.asarray(array)
    except ValueError as error:  # ragged nested lists
        raise AudioDecodeError(f"audio arrays must be rectangular numbers; {error}") from None
    if array.dtype in INTEGER_SCALES:
        array = array.astype(np.float32) / INTEGER_SCALES[array.dtype]
    elif array.dtype == np.uint8:
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif array.dtype.kind != "f":
        raise AudioDecodeError(
            f"audio arrays must hold float or int8/int16/int32 PCM samples; got dtype {array.dtype}."
        )
    if array.ndim not in (1, 2):
        raise AudioDecodeError(
            f"audio arrays must be 1-D (samples) or 2-D (channels, samples); got shape {array.shape}."
        )
    return array.astype(np.float32, copy=False)


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Average the channels of an array whose layout is not known (see `channel_axis`)."""
    if waveform.ndim == 1:
        return waveform.astype(np.float32, copy=False)
    return waveform.mean(axis=channel_axis(waveform.shape)).astype(np.float32)


def channel_axis(shape: tuple[int, int]) -> int:
    """The channel axis of a 2-D audio array, (channels, samples) or (samples, channels): the shorter axis, which
    must hold at most `MAX_ARRAY_CHANNELS`. A shape without such an axis, e.g. (64, 10) (64 channels of 10 samples,
    or 10 samples of 64 channels?) or (2, 2), is refused rather than guessed."""
    axis = 0 if shape[0] < shape[1] else 1
    if shape[0] == shape[1] or shape[axis] > MAX_ARRAY_CHANNELS:
        raise AudioDecodeError(
            f"an audio array of shape {tuple(shape)} has no channel axis: 2-D audio is (channels, samples) or "
            f"(samples, channels), with at most {MAX_ARRAY_CHANNELS} channels on the shorter axis. Pass a 1-D array "
            "of samples (e.g. average the channels yourself), or the clip as (channels, samples)."
        )
    return axis


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    if orig_rate == target_rate:
        return waveform
    import soxr

    return soxr.resample(waveform, orig_rate, target_rate, quality="HQ").astype(np.float32)


def _check_duration(seconds: float | None, max_seconds: float | None, name: str, decoded: bool = False) -> None:
    """Refuse audio over `max_seconds`; `decoded` when decoding stopped at the limit (the true length is unknown)."""
    if seconds is not None and max_seconds is not None and seconds > max_seconds:
        length = "is longer than" if decoded else f"lasts {seconds:.1f} s, over"
        raise AudioTooLongError(
            f"{name} {length} max_audio_seconds={max_seconds:g}. Split it, or raise processor.max_audio_seconds."
        )


def _checked_array(waveform: np.ndarray, orig_rate, sampling_rate: int, max_seconds: float | None) -> np.ndarray:
    """Resample a mono array, refusing a bad or too-long declared length before the resampler allocates."""
    if isinstance(orig_rate, bool) or not isinstance(orig_rate, (int, float, np.integer, np.floating)):
        raise AudioDecodeError(f"an audio array's sampling_rate must be a number; got {orig_rate!r}.")
    if not orig_rate > 0 or int(orig_rate) != orig_rate:
        raise AudioDecodeError(f"an audio array's sampling_rate must be a positive integer; got {orig_rate!r}.")
    if not MIN_SAMPLING_RATE <= orig_rate <= MAX_SAMPLING_RATE:
        raise AudioDecodeError(
            f"an audio array's sampling_rate is {orig_rate:g} Hz; audio is sampled at {MIN_SAMPLING_RATE} to "
            f"{MAX_SAMPLING_RATE} Hz (is it the rate, not the length?)."
        )
    _check_duration(len(waveform) / orig_rate, max_seconds, "an audio array")
    return resample(waveform, int(orig_rate), sampling_rate)


def _checked_bytes(data, policy: AudioSourcePolicy) -> bytes:
    if not policy.allow_bytes:
        raise AudioSourceError("raw audio bytes are not allowed by this processor's audio policy.")
    return bytes(data)


def _load_from_dict(source: dict, sampling_rate: int, max_seconds, policy: AudioSourcePolicy) -> np.ndarray:
    if source.get("array") is not None:
        orig_rate = source.get("sampling_rate")
        if orig_rate is None:
            raise AudioDecodeError("an audio dict with an 'array' needs its 'sampling_rate'.")
        return _checked_array(to_mono(as_float_array(source["array"])), orig_rate, sampling_rate, max_seconds)
    if source.get("bytes"):
        name = source.get("path") or "audio bytes"
        return _decode_bytes(_checked_bytes(source["bytes"], policy), sampling_rate, name, max_seconds)
    if source.get("path"):
        return _load_from_path_or_url(os.fspath(source["path"]), sampling_rate, max_seconds, policy)
    raise AudioDecodeError(
        f"an audio dict needs 'array' + 'sampling_rate', 'bytes' or 'path'; got keys {sorted(source)}."
    )


def _load_from_path_or_url(path: str, sampling_rate: int, max_seconds, policy: AudioSourcePolicy) -> np.ndarray:
    if is_url(path):
        return _decode_bytes(download(path, policy), sampling_rate, path, max_seconds)
    readable = checked_local_path(path, policy)
    if not os.path.isfile(readable):
        raise FileNotFoundError(f"audio file not found: {path}")
    if os.path.getsize(readable) == 0:
        raise AudioDecodeError(f"{path} is an empty file (0 bytes).")
    return _decode(readable, sampling_rate, path, max_seconds)


def _decode_bytes(data: bytes, sampling_rate: int, name: str, max_seconds=None) -> np.ndarray:
    if not data:
        raise AudioDecodeError(f"{name} is empty (0 bytes).")
    return _decode(data, sampling_rate, name, max_seconds)


def audio_container(head: bytes) -> str | None:
    """The audio file format `head` (a file's first bytes) starts like, or None (not a self-contained audio file)."""
    for offset, signature, name in AUDIO_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio / ADTS frame, no tag
        return "MP3/AAC"
    return None


def _check_container(data: bytes | str, name: str) -> None:
    if isinstance(data, str):
        with open(data, "rb") as handle:
            head = handle.read(16)
    else:
        head = data[:16]
    if audio_container(head) is None:
        formats = ", ".join(dict.fromkeys(format_name for _, _, format_name in AUDIO_SIGNATURES))
        raise AudioDecodeError(
            f"{name} is not a recognised audio file (it starts with {head[:8]!r}); accepted: {formats}, MP3/AAC "
            "frames. Playlists, concat lists and stream descriptions (HLS, ffconcat, SDP) are refused."
        )


def _decode(data: bytes | str, sampling_rate: int, name: str, max_seconds) -> np.ndarray:
    """torchcodec, else (only when torchcodec cannot open the stream) soundfile; errors name both backends.

    Only self-contained audio files reach either (`audio_container`), so no decode opens a socket or another file.
    """
    _check_container(data, name)
    _warn_if_wav_is_cut(data, name)
    errors = []
    for backend, decoder in (("torchcodec", _decode_with_torchcodec), ("soundfile", _decode_with_soundfile)):
        try:
            return decoder(data, sampling_rate, name, max_seconds)
        except ImportError as error:
            errors.append(f"{backend}: not installed ({error})")
        except _CannotOpen as error:
            errors.append(f"{backend}: {error}")
    raise AudioDecodeError(f"could not decode audio from {name}: " + "; ".join(errors))


def _clean_message(error: Exception) -> str:
    """A backend's message without its C++ source locations; one line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = _INTERNAL_LOCATION.sub("", text).strip()
    if "should never happen" in text.lower():
        return "internal decoder error (the stream is probably corrupt)"
    return text


def _decode_with_torchcodec(data, sampling_rate: int, name: str = "audio", max_seconds=None) -> np.ndarray:
    from torchcodec.decoders import AudioDecoder

    try:
        decoder = AudioDecoder(data, sample_rate=sampling_rate)
    except Exception as error:  # torchcodec raises RuntimeError/ValueError for what ffmpeg cannot open
        raise _CannotOpen(_clean_message(error)) from None
    return _from_decoder(decoder, sampling_rate, name, max_seconds)


def _from_decoder(decoder, sampling_rate: int, name: str, max_seconds=None) -> np.ndarray:
    """Decode at most `max_seconds` (plus one sample to tell "too long") from an opened torchcodec decoder."""
    metadata = getattr(decoder, "metadata", None)
    declared = getattr(metadata, "duration_seconds_from_header", None) or getattr(metadata, "duration_seconds", None)
    _check_duration(declared, max_seconds, name)
    try:
        if max_seconds is None:
            samples = decoder.get_all_samples()
        else:
            begin = getattr(metadata, "begin_stream_seconds", None) or 0.0
            samples = decoder.get_samples_played_in_range(begin, begin + max_seconds + 1.0 / sampling_rate)
    except Exception as error:  # a stream that opened but breaks while decoding: report it, never decode again
        if "no audio frames were decoded" in str(error).lower():
            return np.zeros(0, dtype=np.float32)  # the caller reports the empty clip
        raise AudioDecodeError(f"could not decode audio from {name}: torchcodec: {_clean_message(error)}") from None
    rate = int(samples.sample_rate)
    waveform = samples.data.float().mean(dim=0).numpy()  # torchcodec's layout is (channels, samples)
    _check_duration(len(waveform) / rate, max_seconds, name, decoded=True)
    _warn_if_truncated(len(waveform) / rate, declared, name)
    return resample(waveform, rate, sampling_rate)


def _warn_if_truncated(decoded_s: float, declared_s: float | None, name: str) -> None:
    if declared_s and decoded_s < declared_s - TRUNCATION_TOLERANCE_S:
        logger.warning(
            "%s looks truncated: its header declares %.2f s but only %.2f s could be decoded",
            name,
            declared_s,
            decoded_s,
        )


def _warn_if_wav_is_cut(data: bytes | str, name: str) -> None:
    """WAV files cut short: both decoders quietly take the length from the file size, so read the RIFF header."""
    if isinstance(data, str):
        with open(data, "rb") as handle:
            head, size = handle.read(1 << 16), os.fstat(handle.fileno()).st_size
    else:
        head, size = data[: 1 << 16], len(data)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(head):
        chunk, length = head[offset : offset + 4], struct.unpack("<I", head[offset + 4 : offset + 8])[0]
        if chunk == b"data":
            available = size - offset - 8
            if 0 < length < 0xFFFFFFFF and available < length:
                logger.warning(
                    "%s looks truncated: its WAV header declares %d bytes of audio but the file holds %d",
                    name,
                    length,
                    max(available, 0),
                )
            return
        offset += 8 + length + (length & 1)


def _decode_with_soundfile(data, sampling_rate: int, name: str = "audio", max_seconds=None) -> np.ndarray:
    import soundfile

    try:
        handle = soundfile.SoundFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Exception as error:  # soundfile.LibsndfileError and friends for unreadable input
        raise _CannotOpen(_clean_message(error)) from None
    with handle:
        declared = handle.frames / handle.samplerate if handle.frames > 0 else None
        _check_duration(declared, max_seconds, name)
        limit = -1 if max_seconds is None else int(max_seconds * handle.samplerate) + 1
        try:
            waveform = handle.read(frames=limit, dtype="float32", always_2d=True)
        except Exception as error:  # a stream that opened but breaks while decoding
            raise AudioDecodeError(f"could not decode audio from {name}: soundfile: {_clean_message(error)}") from None
        orig_rate = handle.samplerate
    _check_duration(len(waveform) / orig_rate, max_seconds, name, decoded=True)
    _warn_if_truncated(len(waveform) / orig_rate, declared, name)
    return resample(waveform.mean(axis=1).astype(np.float32), orig_rate, sampling_rate)


def audio_source(item: dict):
    """The audio payload of an audio item: a path/URL/bytes/array, or an `{"array", "sampling_rate"}` dict."""
    if item.get("array") is not None:
        rate = item.get("sampling_rate", TARGET_SAMPLING_RATE)
        return {"array": item["array"], "sampling_rate": rate}
    for key in ("path", "audio", "url"):
        if item.get(key) is not None:
            return item[key]
    raise ValueError(f"An audio item needs one of {AUDIO_SOURCE_KEYS}; got keys {sorted(item)}.")
