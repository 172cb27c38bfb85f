"""What each split may draw from: espeak-ng voice variants by sex, speaking rates by class, tone frequencies by
pitch class, durations and volumes. The probe split holds out voices and settings that training never sees (on top
of its own sentences), so a probe score measures hearing, not memory of the training clips.

Voice sexes follow espeak-ng's own variant table (`espeak-ng --voices=variant`, Age/Gender column); measured median
F0 on one sentence: male variants 76-121 Hz, female variants 174-271 Hz. Left out: whispering, robotic and
novelty variants, and `zac`/`shelby` (marked male but voiced at 175-340 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "probe")
MALE, FEMALE = "Male", "Female"
SPEEDS = ("Slow", "Normal", "Fast")
PITCHES = ("Low", "High")
NOISES = ("white", "pink", "brown")


@dataclass(frozen=True)
class SplitSettings:
    voices: dict[str, tuple[str, ...]]  # sex -> espeak-ng variants (used as `en+<variant>`)
    words_per_minute: dict[str, tuple[int, ...]]  # speaking-speed class -> espeak-ng `-s` values
    espeak_pitch: tuple[int, ...]  # espeak-ng `-p` (0-99; 50 is the variant's own pitch)
    tone_hz: dict[str, tuple[int, ...]]  # pitch class -> sine frequencies
    seconds: tuple[float, ...]  # lengths of tones, noise and silence
    volumes: tuple[float, ...]  # sox `vol` of tones and noise


SETTINGS = {
    "train": SplitSettings(
        voices={
            MALE: (
                "m1", "m2", "m3", "m5", "m7", "m8", "adam", "Alex", "Andy", "antonio", "benjamin", "boris", "caleb",
                "david", "edward", "Gene", "john", "Lee", "max", "Michael", "Mike", "paul", "robert", "norbert",
                "travis", "victor", "grandpa", "sandro", "quincy", "klatt",
            ),
            FEMALE: ("f1", "f2", "f3", "f5", "Alicia", "Annie", "aunty", "belinda", "linda", "steph", "anika"),
        },
        words_per_minute={"Slow": (90, 105, 125), "Normal": (155, 170, 190), "Fast": (240, 270, 300)},
        espeak_pitch=(35, 50, 65),
        tone_hz={"Low": (110, 150, 200, 250, 300), "High": (1200, 1600, 2000, 2500, 3200, 4000)},
        seconds=(1.0, 2.0, 3.0, 4.0, 5.0),
        volumes=(0.3, 0.5, 0.7),
    ),
    "probe": SplitSettings(
        voices={MALE: ("m4", "m6", "ed", "rob", "iven", "gustave"), FEMALE: ("f4", "Andrea", "grandma", "steph3")},
        words_per_minute={"Slow": (115,), "Normal": (180,), "Fast": (255, 285)},
        espeak_pitch=(42, 58),
        tone_hz={"Low": (130, 180, 270), "High": (1400, 2200, 3600)},
        seconds=(1.5, 2.5, 3.5),
        volumes=(0.4, 0.6),
    ),
}  # fmt: skip


def split_settings(split: str) -> SplitSettings:
    if split not in SETTINGS:
        raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    return SETTINGS[split]
