"""Build the smoke audio QA set offline from espeak-ng speech and sox tones, noise and beeps (MMAU layout).

    desta-audio smoke-qa OUT_DIR

writes `OUT_DIR/audio/*.wav` (16 kHz mono 16-bit) and `OUT_DIR/smoke_qa.json`, whose records (`id`, `audio_id`,
`question`, `choices`, `answer`, `task`, `sub-category`, `difficulty`) equal the committed
`desta_audio/evaluation/smoke_qa_answers.json`. Output is deterministic: espeak-ng is, and sox runs in repeatable mode
(`-R`, fixed noise seed). Evaluate it with `desta-audio eval --data-file OUT_DIR/smoke_qa.json ...`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DATA_FILE = "smoke_qa.json"
AUDIO_FOLDER = "audio"
ANSWERS_FILE = Path(__file__).with_name("smoke_qa_answers.json")

WORDS = ("apple", "river", "seven", "window")
SENTENCE = "the weather is lovely today"
ACCENTS = ("American English", "British English")
COUNT_NAMES = ("One", "Two", "Three", "Four")


@dataclass(frozen=True)
class SmokeQuestion:
    """One question; `sound` says how to make its clip: ("speech", text, voice), ("tone", Hz), ("noise",),
    or ("beeps", count)."""

    id: str
    sound: tuple
    question: str
    choices: tuple[str, ...]
    answer: str
    task: str
    sub_category: str
    difficulty: str

    def record(self) -> dict:
        return {
            "id": self.id,
            "audio_id": f"./{AUDIO_FOLDER}/{self.id}.wav",
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
            "task": self.task,
            "sub-category": self.sub_category,
            "difficulty": self.difficulty,
        }


def _group(task: str, sub_category: str, difficulty: str, question: str, choices, cases) -> list[SmokeQuestion]:
    """Questions sharing a wording and choices; `cases` are (id, sound, answer)."""
    return [
        SmokeQuestion(qid, sound, question, tuple(choices), answer, task, sub_category, difficulty)
        for qid, sound, answer in cases
    ]


def smoke_questions() -> list[SmokeQuestion]:
    """The set: spoken words, accents, voice gender, pitch, speech vs noise, beep counts (16 questions)."""
    words = [(f"word-{word}", ("speech", word, "en-us"), word) for word in WORDS]
    accents = [
        ("accent-en-us", ("speech", SENTENCE, "en-us"), "American English"),
        ("accent-en-gb", ("speech", SENTENCE, "en-gb"), "British English"),
    ]
    voices = [
        ("voice-male", ("speech", SENTENCE, "en+m3"), "Male"),
        ("voice-female", ("speech", SENTENCE, "en+f3"), "Female"),
    ]
    tones = [("tone-220hz", ("tone", 220), "Low"), ("tone-880hz", ("tone", 880), "High")]
    contents = [
        ("content-noise", ("noise",), "Noise"),
        ("content-speech", ("speech", "hello there, how are you", "en-us"), "Speech"),
    ]
    beeps = [(f"beeps-{n}", ("beeps", n), COUNT_NAMES[n - 1]) for n in range(1, len(COUNT_NAMES) + 1)]
    return [
        *_group("speech", "Spoken word", "easy", "Which word is spoken in the audio?", WORDS, words),
        *_group("speech", "Accent", "hard", "Which accent does the speaker have?", ACCENTS, accents),
        *_group(
            "speech", "Speaker gender", "easy", "Is the speaker's voice male or female?", ("Male", "Female"), voices
        ),
        *_group("music", "Pitch", "easy", "Is the pitch of this tone low or high?", ("Low", "High"), tones),
        *_group(
            "sound", "Speech vs noise", "easy", "Does the audio contain speech or noise?", ("Speech", "Noise"), contents
        ),
        *_group("sound", "Counting", "medium", "How many beeps are there in the audio?", COUNT_NAMES, beeps),
    ]


def _sox_output(path: Path) -> list[str]:
    return ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)]


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


def make_clip(sound: tuple, path: Path) -> None:
    """Write one clip; every sox call is repeatable (`-R`)."""
    kind = sound[0]
    if kind == "speech":
        _, text, voice = sound
        with tempfile.TemporaryDirectory() as scratch:
            raw = Path(scratch) / "raw.wav"
            _run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text])
            _run(["sox", "-R", str(raw), *_sox_output(path)])
    elif kind == "tone":
        _run(["sox", "-R", "-n", *_sox_output(path), "synth", "1.5", "sine", str(sound[1]), "vol", "0.5"])
    elif kind == "noise":
        _run(["sox", "-R", "-n", *_sox_output(path), "synth", "1.5", "whitenoise", "vol", "0.3"])
    elif kind == "beeps":
        # One 0.15 s 1 kHz beep padded by 0.25 s of silence on each side, played `count` times.
        _run(
            [
                "sox",
                "-R",
                "-n",
                *_sox_output(path),
                "synth",
                "0.15",
                "sine",
                "1000",
                "vol",
                "0.5",
                "pad",
                "0.25",
                "0.25",
                "repeat",
                str(sound[1] - 1),
            ]
        )
    else:
        raise ValueError(f"unknown sound kind {kind!r}")


def check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(f"make_smoke_qa needs {' and '.join(missing)} (Debian: apt-get install espeak-ng sox)")


def make_smoke_qa(output_dir: str | Path) -> Path:
    """Write the clips and `smoke_qa.json` into `output_dir`; return the JSON's path."""
    check_tools()
    output_dir = Path(output_dir)
    (output_dir / AUDIO_FOLDER).mkdir(parents=True, exist_ok=True)
    questions = smoke_questions()
    for question in questions:
        make_clip(question.sound, output_dir / AUDIO_FOLDER / f"{question.id}.wav")
    data_path = output_dir / DATA_FILE
    data_path.write_text(json.dumps([q.record() for q in questions], indent=2) + "\n")
    logger.info("wrote %d questions to %s", len(questions), data_path)
    return data_path
