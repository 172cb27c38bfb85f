"""The lab's questions: what each task asks, the one-sentence answer the metadata gives (the labels recipe's
target), and the probe's multiple-choice questions (the hearing preset's records).

Tasks: `sex` (speaker sex), `rate` (speaking rate), `sound` (speech, tone, noise or silence), `pitch` (a tone's
pitch), `content` (which sentence was said). A clip is asked the tasks that apply to it: speech all but pitch,
tones sound and pitch, noise and silence sound only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from processing import DEFAULT_SYSTEM_PROMPT, audio_chat

from ..data.descriptions import row_random
from .catalog import MALE, PITCHES, SPEEDS
from .plan import Clip

TASKS = ("sex", "rate", "sound", "pitch", "content")
SOUND_TYPES = ("Speech", "Tone", "Noise", "Silence")
CONTENT_CHOICES = 4


@dataclass(frozen=True)
class Task:
    name: str
    paraphrases: tuple[str, ...]  # training questions (the labels records and the builder's instruction pool)
    probe_question: str  # the probe's wording, never used in training
    applies: tuple[str, ...]  # the clip kinds it is asked of


TASK_SPECS = {
    "sex": Task(
        "sex",
        (
            "Is the speaker male or female?",
            "What is the gender of the speaker?",
            "Is this a man's voice or a woman's voice?",
            "Tell me the speaker's gender.",
        ),
        "What is the speaker's gender?",
        ("speech",),
    ),
    "rate": Task(
        "rate",
        (
            "How fast does the speaker talk?",
            "Is the speaking speed slow, normal or fast?",
            "Describe the speaking speed of the voice.",
            "Does the person speak slowly or quickly?",
        ),
        "What is the speaking speed?",
        ("speech",),
    ),
    "sound": Task(
        "sound",
        (
            "What kind of sound is this?",
            "Is this speech, a tone, noise or silence?",
            "What type of audio is in the clip?",
            "Classify the sound in this recording.",
        ),
        "What kind of sound is in the audio?",
        ("speech", "tone", "noise", "silence"),
    ),
    "pitch": Task(
        "pitch",
        ("Is the pitch low or high?", "Is this a low or a high tone?", "Describe the pitch of the sound."),
        "Is the pitch of this tone low or high?",
        ("tone",),
    ),
    "content": Task(
        "content",
        ("What does the speaker say?", "Transcribe the speech.", "What is said in the audio?"),
        "Which sentence is spoken in the audio?",
        ("speech",),
    ),
}


def applicable_tasks(clip: Clip) -> list[str]:
    return [name for name in TASKS if clip.kind in TASK_SPECS[name].applies]


def label_response(task: str, clip: Clip) -> str:
    """The attribute, stated in one sentence whose words hold the probe's right choice (so MMAU's rule accepts it)."""
    if task == "sex":
        return f"The speaker is {clip.sex.lower()}."
    if task == "rate":
        return f"The speaking speed is {clip.speed.lower()}."
    if task == "pitch":
        return f"This is a {clip.pitch.lower()} tone."
    if task == "content":
        return f'The speaker says: "{clip.text}"'
    return {"speech": "This is speech.", "tone": "This is a tone.", "silence": "This is silence."}.get(
        clip.kind, f"This is {clip.noise} noise."
    )


def instruction_pool() -> list[str]:
    """Every training question, for the builder's `--prompts` (the DeSTA recipe asks them of any clip)."""
    return [question for name in TASKS for question in TASK_SPECS[name].paraphrases]


def sft_record(rid: str, audio, response: str, instruction: str = "What is it?", transcript: str = "") -> dict:
    """A training record in the content-list form `train_sft.py` reads: system + user (audio item, text), the
    target in `response`."""
    audio_item = {"type": "audio", "path": audio, "transcript": transcript}
    return {"id": rid, "messages": audio_chat([audio_item], instruction, DEFAULT_SYSTEM_PROMPT), "response": response}


def label_records(clips: list[Clip], seed: int) -> list[dict]:
    """One labels record per clip and applicable task: a training question (seeded per clip and task) and the
    metadata's answer. Audio paths are relative to the split folder (`train_sft.py --audio_root SPLIT_DIR`)."""
    records = []
    for clip in clips:
        for task in applicable_tasks(clip):
            question = row_random(seed, f"{clip.name}-{task}", "question").choice(TASK_SPECS[task].paraphrases)
            records.append(
                {
                    **sft_record(f"{clip.name}-{task}", clip.file, label_response(task, clip), question, clip.text),
                    "task": task,
                }
            )
    return records


def probe_records(clips: list[Clip], seed: int, attributes) -> list[dict]:
    """The probe's multiple-choice questions (MMAU layout plus `group`, `transcript` and `attributes`, which the
    hearing preset's text oracle renders into the builder's seed description). Sex is asked of every twin clip,
    rate of every triplet clip; sound type of every non-speech clip and as many speech clips as there are tones;
    pitch of every tone; content of one clip per twin or triplet. `attributes(clip)` gives the metadata's
    description attributes."""
    rng = random.Random(f"lab-probe-{seed}")
    sentences = sorted({clip.text for clip in clips if clip.text})
    speech = [clip for clip in clips if clip.kind == "speech"]
    tones = sum(clip.kind == "tone" for clip in clips)
    asked: list[tuple[str, Clip]] = []
    for clip in clips:
        if clip.group.startswith("twin-"):
            asked.append(("sex", clip))
        if clip.group.startswith("triplet-"):
            asked.append(("rate", clip))
        if clip.kind != "speech":
            asked.append(("sound", clip))
        if clip.kind == "tone":
            asked.append(("pitch", clip))
    asked += [("sound", clip) for clip in rng.sample(speech, min(tones, len(speech)))]
    groups: dict[str, list[Clip]] = {}
    for clip in speech:
        groups.setdefault(clip.group, []).append(clip)
    asked += [("content", rng.choice(members)) for members in groups.values()]
    return [_probe_record(task, clip, _choices(task, clip, sentences, rng), attributes(clip)) for task, clip in asked]


def _choices(task: str, clip: Clip, sentences: list[str], rng: random.Random) -> list[str]:
    if task == "sex":
        return [MALE, "Female"]
    if task == "rate":
        return list(SPEEDS)
    if task == "sound":
        return list(SOUND_TYPES)
    if task == "pitch":
        return list(PITCHES)
    others = rng.sample([s for s in sentences if s != clip.text], CONTENT_CHOICES - 1)
    choices = [clip.text, *others]
    rng.shuffle(choices)
    return choices


def _answer(task: str, clip: Clip) -> str:
    return {"sex": clip.sex, "rate": clip.speed, "pitch": clip.pitch, "content": clip.text}.get(
        task, clip.kind.capitalize()
    )


def _probe_record(task: str, clip: Clip, choices: list[str], attributes: dict) -> dict:
    return {
        "id": f"{task}/{clip.name}",
        "audio_id": clip.file,
        "question": TASK_SPECS[task].probe_question,
        "choices": choices,
        "answer": _answer(task, clip),
        "task": task,
        "group": clip.group if task in ("sex", "rate") else "",
        "transcript": clip.text,
        "attributes": attributes,
    }
