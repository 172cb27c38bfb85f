"""The example clips shipped with the demo, and how they were made (espeak-ng speech, sox tones).

They are committed WAV files (16 kHz mono, about 300 KB together) rather than generated at start-up: a Space
has neither espeak-ng nor sox unless told to install them, and committed bytes are what every user hears.
`python -m desta_audio.demo.examples` rebuilds them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..testing import sox_synth, speak

EXAMPLES_DIR = Path(__file__).resolve().parent / "clips"
# (file, how it is made, the question the page suggests)
SPOKEN_CLIPS = {
    "open_the_door.wav": "please open the door",
    "good_morning.wav": "good morning everyone, the meeting starts at nine",
}
TONE_CLIP = "tone_440hz.wav"
TONE_SECONDS = 2.0
EXAMPLES = [
    (["open_the_door.wav"], "What does the speaker ask for?"),
    (["good_morning.wav"], "When does the meeting start?"),
    ([TONE_CLIP], "Is this speech, music or a tone?"),
    (["open_the_door.wav", TONE_CLIP], "Which of the two clips contains speech?"),
]


def example_inputs(folder: Path = EXAMPLES_DIR) -> list[dict]:
    """The examples as values of the page's question box (`{"text", "files"}`)."""
    return [{"text": question, "files": [str(folder / name) for name in files]} for files, question in EXAMPLES]


def make_example_clips(folder: Path = EXAMPLES_DIR) -> list[Path]:
    """Write the example clips into `folder` (needs espeak-ng and sox)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [speak(folder / name, text) for name, text in SPOKEN_CLIPS.items()]
    paths.append(sox_synth(folder / TONE_CLIP, TONE_SECONDS, freq=440))
    return paths


if __name__ == "__main__":
    sys.stdout.write("\n".join(str(path) for path in make_example_clips()) + "\n")
