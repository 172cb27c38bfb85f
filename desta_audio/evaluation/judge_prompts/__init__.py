"""The LLM judges' prompts, one versioned text file each (`<benchmark>[_part].v<N>.txt`, read as package data).

A prompt's text decides a judge's verdicts, so it is never edited in place: a changed prompt is a new file with the
next version, and `judgements.jsonl` keys every reply on the exact prompt's hash, so replies to an older prompt are
never reused for a newer one. Which texts are the benchmarks' own and which are restatements is said where each is
used (`presets`, `speech_ifeval`, `voicebench`, `dynamic_superb`).
"""

from importlib.resources import files


def judge_prompt(name: str) -> str:
    """The text of `name` (e.g. `"sakura.v1"`), exactly as the file holds it less its final newline."""
    return files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8").removesuffix("\n")
