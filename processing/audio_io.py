"""Audio decoding to 16 kHz mono float32, with errors that name the problem.

torchcodec (what transformers and datasets use; needs ffmpeg) decodes first; soundfile + soxr is the
fallback. Both are optional imports so the processor still loads where only one of them is installed.
"""

import io
import os
import urllib.request

import numpy as np

TARGET_SAMPLING_RATE = 16000
AUDIO_SOURCE_KEYS = ("path", "audio", "url", "array")


class AudioDecodeError(ValueError):
    """Raised for audio that exists but cannot be decoded, or decodes to nothing."""


def load_audio(source, sampling_rate: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Decode `source` to a 1-D float32 array at `sampling_rate` Hz, averaging channels.

    `source` may be a local path, an http(s) URL, raw bytes, a numpy array or torch tensor (taken to be at
    `sampling_rate` already), a `{"array", "sampling_rate"}` or `{"path"|"bytes"}` dict (what `datasets`
    yields), or a torchcodec `AudioDecoder` (what `datasets.Audio` yields in datasets >= 4).
    """
    if isinstance(source, dict):
        waveform = _load_from_dict(source, sampling_rate)
        name = source.get("path") or "audio dict"
    elif isinstance(source, (str, os.PathLike)):
        waveform = _load_from_path_or_url(os.fspath(source), sampling_rate)
        name = os.fspath(source)
    elif isinstance(source, (bytes, bytearray)):
        waveform = _decode_bytes(bytes(source), sampling_rate, "audio bytes")
        name = "audio bytes"
    elif hasattr(source, "get_all_samples"):
        waveform = _from_decoder(source, sampling_rate)
        name = "AudioDecoder"
    else:
        waveform = to_mono(_as_numpy(source))
        name = "audio array"
    if waveform.size == 0:
        raise AudioDecodeError(f"{name} is an empty clip (0 samples).")
    if not np.all(np.isfinite(waveform)):
        raise AudioDecodeError(f"{name} contains NaN or infinite samples.")
    return waveform


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().float().numpy()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim not in (1, 2):
        raise AudioDecodeError(
            f"audio arrays must be 1-D (samples) or 2-D (channels, samples); got shape {array.shape}."
        )
    return array


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Average channels. 2-D input is (channels, samples) unless the first axis is clearly the time axis."""
    if waveform.ndim == 1:
        return waveform.astype(np.float32, copy=False)
    channels_first = waveform.shape[0] <= waveform.shape[1]
    return waveform.mean(axis=0 if channels_first else 1).astype(np.float32)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    if orig_rate == target_rate:
        return waveform
    import soxr

    return soxr.resample(waveform, orig_rate, target_rate, quality="HQ").astype(np.float32)


def _load_from_dict(source: dict, sampling_rate: int) -> np.ndarray:
    if source.get("array") is not None:
        orig_rate = source.get("sampling_rate")
        if orig_rate is None:
            raise AudioDecodeError("an audio dict with an 'array' needs its 'sampling_rate'.")
        return resample(to_mono(_as_numpy(source["array"])), int(orig_rate), sampling_rate)
    if source.get("bytes"):
        return _decode_bytes(source["bytes"], sampling_rate, source.get("path") or "audio bytes")
    if source.get("path"):
        return _load_from_path_or_url(source["path"], sampling_rate)
    raise AudioDecodeError(
        f"an audio dict needs 'array' + 'sampling_rate', 'bytes' or 'path'; got keys {sorted(source)}."
    )


def _load_from_path_or_url(path: str, sampling_rate: int) -> np.ndarray:
    if path.startswith(("http://", "https://")):
        with urllib.request.urlopen(path, timeout=60) as response:
            return _decode_bytes(response.read(), sampling_rate, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"{path} is an empty file (0 bytes).")
    with open(path, "rb") as handle:
        return _decode_bytes(handle.read(), sampling_rate, path)


def _decode_bytes(data: bytes, sampling_rate: int, name: str) -> np.ndarray:
    errors = []
    for backend, decoder in (("torchcodec", _decode_with_torchcodec), ("soundfile", _decode_with_soundfile)):
        try:
            return decoder(data, sampling_rate)
        except ImportError as error:
            errors.append(f"{backend}: not installed ({error})")
        except Exception as error:  # each backend raises its own types for undecodable input
            errors.append(f"{backend}: {error}")
    raise AudioDecodeError(f"could not decode audio from {name}: " + "; ".join(errors))


def _decode_with_torchcodec(data: bytes, sampling_rate: int) -> np.ndarray:
    from torchcodec.decoders import AudioDecoder

    return _from_decoder(AudioDecoder(data, sample_rate=sampling_rate), sampling_rate)


def _from_decoder(decoder, sampling_rate: int) -> np.ndarray:
    samples = decoder.get_all_samples()
    waveform = to_mono(samples.data.float().numpy())
    return resample(waveform, int(samples.sample_rate), sampling_rate)


def _decode_with_soundfile(data: bytes, sampling_rate: int) -> np.ndarray:
    import soundfile

    waveform, orig_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
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
