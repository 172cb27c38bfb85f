"""The clips of one split, decided before any audio is made: sex twins (one sentence, a male and a female voice),
rate triplets (one sentence and voice, slow / normal / fast), tones (low / high), noise (white / pink / brown) and
silence, each with the attributes its metadata row states. Deterministic in (split, size, seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .catalog import FEMALE, MALE, NOISES, PITCHES, SPEEDS, split_settings
from .sentences import draw_sentences

# Shares of a split's clips: twins and triplets (speech), then tones and noise; silence takes the rest.
TWIN_SHARE, TRIPLET_SHARE, TONE_SHARE, NOISE_SHARE = 0.36, 0.36, 0.12, 0.10
MIN_CLIPS, MAX_CLIPS = 20, 10_000


@dataclass(frozen=True)
class Clip:
    """One clip and what is known about it. `kind` is the sound type: speech, tone, noise or silence."""

    name: str
    kind: str
    group: str = ""  # twin-0003 / triplet-0012 for the clips of a minimal group
    text: str = ""
    voice: str = ""
    sex: str = ""
    speed: str = ""
    words_per_minute: int = 0
    espeak_pitch: int = 0
    pitch: str = ""
    hz: int = 0
    noise: str = ""
    seconds: float = 0.0
    volume: float = 0.0

    @property
    def file(self) -> str:
        return f"audio/{self.name}.wav"

    @property
    def audio_category(self) -> str:
        """The description's category: Speech, Tone, White noise, Pink noise, Brown noise or Silence."""
        return f"{self.noise.capitalize()} noise" if self.kind == "noise" else self.kind.capitalize()


def clip_counts(total: int) -> dict[str, int]:
    """How many twin pairs, triplets, tones, noise and silence clips make `total` clips."""
    if not MIN_CLIPS <= total <= MAX_CLIPS:
        raise ValueError(
            f"a lab split holds {MIN_CLIPS} to {MAX_CLIPS} clips (about 90 kB each); got {total}. "
            "Build several labs with other seeds for more."
        )
    counts = {
        "twins": round(total * TWIN_SHARE / 2),
        "triplets": round(total * TRIPLET_SHARE / 3),
        "tones": round(total * TONE_SHARE),
        "noise": round(total * NOISE_SHARE),
    }
    counts["silence"] = total - 2 * counts["twins"] - 3 * counts["triplets"] - counts["tones"] - counts["noise"]
    return counts


def plan_clips(split: str, total: int, seed: int) -> list[Clip]:
    """Every clip of the split, in a fixed order (twins, triplets, tones, noise, silence)."""
    settings = split_settings(split)
    counts = clip_counts(total)
    rng = random.Random(f"lab-plan-{seed}-{split}")
    sentences = iter(draw_sentences(counts["twins"] + counts["triplets"], split, seed))
    clips: list[Clip] = []
    for index in range(counts["twins"]):
        group, text = f"twin-{index:04d}", next(sentences)
        speed = rng.choice(SPEEDS)
        wpm, espeak_pitch = rng.choice(settings.words_per_minute[speed]), rng.choice(settings.espeak_pitch)
        for sex in (MALE, FEMALE):
            clips.append(
                Clip(f"{group}-{sex.lower()}", "speech", group, text, rng.choice(settings.voices[sex]), sex, speed,
                     wpm, espeak_pitch)
            )  # fmt: skip
    for index in range(counts["triplets"]):
        group, text = f"triplet-{index:04d}", next(sentences)
        sex = rng.choice((MALE, FEMALE))
        voice, espeak_pitch = rng.choice(settings.voices[sex]), rng.choice(settings.espeak_pitch)
        for speed in SPEEDS:
            wpm = rng.choice(settings.words_per_minute[speed])
            clips.append(Clip(f"{group}-{speed.lower()}", "speech", group, text, voice, sex, speed, wpm, espeak_pitch))
    for index in range(counts["tones"]):
        pitch = PITCHES[index % len(PITCHES)]
        clips.append(
            Clip(f"tone-{index:04d}", "tone", pitch=pitch, hz=rng.choice(settings.tone_hz[pitch]),
                 seconds=rng.choice(settings.seconds), volume=rng.choice(settings.volumes))
        )  # fmt: skip
    for index in range(counts["noise"]):
        clips.append(
            Clip(f"noise-{index:04d}", "noise", noise=NOISES[index % len(NOISES)],
                 seconds=rng.choice(settings.seconds), volume=rng.choice(settings.volumes))
        )  # fmt: skip
    for index in range(counts["silence"]):
        clips.append(Clip(f"silence-{index:04d}", "silence", seconds=rng.choice(settings.seconds)))
    return clips
