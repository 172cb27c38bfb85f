"""The synthesizers behind every generated clip: espeak-ng speech and sox tones, noise and silence, written as
16 kHz mono 16-bit WAV. Every sox call runs in repeatable mode (`-R`: a fixed noise seed) without dither, so the
same arguments give the same bytes. Shared by the lab (`desta_audio.lab`), the tests and the demo's example clips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SAMPLE_RATE = 16000
TOOLS = ("espeak-ng", "sox")


def tools_available() -> bool:
    return all(shutil.which(tool) for tool in TOOLS)


def check_tools() -> None:
    """One clear error naming what to install, before any clip is attempted."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found (Debian: apt-get install espeak-ng sox)")


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


def _sox_output(path: Path, rate: int, channels: int = 1) -> list[str]:
    """16-bit output without dither (`-D`): silence stays exact zeros, and a FLAC of it stays tiny."""
    return ["-r", str(rate), "-c", str(channels), "-b", "16", "-D", str(path)]


def speak(
    path: str | Path,
    text: str,
    voice: str = "en-us",
    rate: int = SAMPLE_RATE,
    speed: int = 150,
    pitch: int | None = None,
) -> Path:
    """Speech with a known transcript: espeak-ng's `voice` (`en-us`, `en+f3`, ...) at `speed` words per minute and
    `pitch` (0-99, espeak's default 50), resampled by sox to `rate` Hz mono."""
    path = Path(path)
    raw = path.with_suffix(".espeak.wav")
    command = ["espeak-ng", "-v", voice, "-s", str(speed), *(["-p", str(pitch)] if pitch is not None else [])]
    try:
        _run([*command, "-w", str(raw), text])
        _run(["sox", "-R", str(raw), *_sox_output(path, rate)])
    finally:
        raw.unlink(missing_ok=True)
    return path


def sox_synth(
    path: str | Path,
    seconds: float,
    kind: str = "sine",
    freq: float = 440.0,
    rate: int = SAMPLE_RATE,
    channels: int = 1,
    volume: float = 0.5,
) -> Path:
    """A tone (`sine`, `square`, ...) or noise (`whitenoise`, `pinknoise`, `brownnoise`) made by sox."""
    path = Path(path)
    if seconds <= 0:
        raise ValueError("sox synth with a zero duration never ends; use write_zero_length_wav")
    args = [kind] if "noise" in kind else [kind, str(freq)]
    _run(["sox", "-R", "-n", *_sox_output(path, rate, channels), "synth", str(seconds), *args, "vol", str(volume)])
    return path


def sox_silence(path: str | Path, seconds: float, rate: int = SAMPLE_RATE) -> Path:
    path = Path(path)
    _run(["sox", "-R", "-n", *_sox_output(path, rate), "trim", "0", str(seconds)])
    return path
