"""Sentences for the lab's speech: drawn from a small grammar (several sentence shapes over everyday words), so a
seed gives thousands of distinct, speakable sentences without shipping a corpus.

Which split a sentence belongs to depends on the sentence alone (a hash of its text), never on the seed or the
sizes: the train split and the probe split can never share a sentence, whatever each was built with.
"""

from __future__ import annotations

import hashlib
import random

NAMES = (
    "Anna", "Peter", "Maria", "David", "Laura", "James", "Sofia", "Daniel", "Emma", "Lucas", "Olivia", "Thomas",
    "Hannah", "Oscar", "Julia", "Victor", "Clara", "Martin", "Nora", "Simon",
)  # fmt: skip
ADJECTIVES = (
    "small", "old", "green", "quiet", "heavy", "bright", "wooden", "yellow", "tired", "happy", "empty", "warm",
    "broken", "tall", "clean", "round", "dark", "soft", "little", "busy",
)  # fmt: skip
ANIMALS = ("dog", "cat", "horse", "bird", "rabbit", "goat", "mouse", "duck", "fox", "sheep", "cow", "owl")
THINGS = (
    "umbrella", "basket", "bicycle", "lamp", "letter", "guitar", "jacket", "ladder", "kettle", "blanket", "camera",
    "bottle", "map", "key", "chair", "window", "book", "box", "coat", "clock",
)  # fmt: skip
PLACES = (
    "garden", "station", "kitchen", "market", "library", "river", "bridge", "school", "harbour", "village",
    "museum", "forest", "hospital", "bakery", "park", "hotel",
)  # fmt: skip
RESTING = ("slept", "waited", "sat", "played", "rested", "stood", "hid", "ran")
PREPOSITIONS = ("under", "near", "behind", "beside", "in front of", "next to")
BOUGHT = ("bought", "found", "painted", "lost", "carried", "fixed", "sold", "borrowed")
TIMES = ("yesterday", "last night", "this morning", "on Sunday", "after lunch", "before dinner", "at noon", "today")
ACTIONS = ("close", "open", "clean", "move", "check", "bring", "wash", "paint")
EVENTS = ("dinner", "the meeting", "the guests arrive", "it gets dark", "we leave", "the train comes", "lunch")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "the weekend")
GOING = ("walk", "drive", "cycle", "go", "travel", "hurry")
RELATIVES = ("sister", "brother", "uncle", "aunt", "neighbour", "friend", "cousin", "teacher", "grandmother")
HABITS = (
    "reads newspapers", "paints flowers", "bakes bread", "plays chess", "writes letters", "feeds the birds",
    "waters the plants", "sings songs", "fixes clocks", "grows tomatoes",
)  # fmt: skip
PERIODS = ("morning", "evening", "week", "weekend", "summer", "winter", "afternoon")
WEATHER = ("cold", "windy", "sunny", "cloudy", "rainy", "foggy", "warm", "quiet")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")


def _with_article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _shapes(pick) -> list[str]:
    """One sentence of each shape, words drawn by `pick(options)`."""
    return [
        f"The {pick(ADJECTIVES)} {pick(ANIMALS)} {pick(RESTING)} {pick(PREPOSITIONS)} the {pick(PLACES)}.",
        f"{pick(NAMES)} {pick(BOUGHT)} {_with_article(pick(ADJECTIVES))} {pick(THINGS)} {pick(TIMES)}.",
        f"Please {pick(ACTIONS)} the {pick(THINGS)} before {pick(EVENTS)}.",
        f"We will {pick(GOING)} to the {pick(PLACES)} on {pick(DAYS)}.",
        f"My {pick(RELATIVES)} {pick(HABITS)} every {pick(PERIODS)}.",
        f"It was {pick(WEATHER)} when {pick(NAMES)} reached the {pick(PLACES)}.",
        f"There are {pick(NUMBERS)} {pick(ADJECTIVES)} {_plural(pick(THINGS))} in the {pick(PLACES)}.",
        f"Did {pick(NAMES)} leave the {pick(THINGS)} at the {pick(PLACES)} {pick(TIMES)}?",
    ]


def sentence_split(sentence: str, probe_share: int = 5) -> str:
    """`probe` for one sentence in `probe_share` (by a hash of its text), `train` for the others."""
    digest = hashlib.sha256(sentence.encode("utf-8")).digest()
    return "probe" if digest[0] % probe_share == 0 else "train"


def draw_sentences(count: int, split: str, seed: int) -> list[str]:
    """`count` distinct sentences of `split`, the shapes taken in turn, deterministic in (`seed`, `split`)."""
    rng = random.Random(f"lab-sentences-{seed}-{split}")
    chosen: dict[str, None] = {}
    attempts = 0
    while len(chosen) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"the sentence grammar cannot give {count} distinct {split} sentences")
        shapes = _shapes(rng.choice)
        sentence = shapes[len(chosen) % len(shapes)]
        if sentence_split(sentence) == split:
            chosen[sentence] = None
    return list(chosen)
