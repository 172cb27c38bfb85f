"""An LLM judge behind any OpenAI-compatible endpoint, for the benchmarks that score answers by asking a model.

The judge is called through the dataset builder's transport (`OpenAIGenerator`: retries with backoff, size and time
caps, the key from an environment variable). Every reply is kept in `judgements.jsonl` beside the predictions, one
line per item with the judge model and the exact prompt's hash, so a stopped run resumes without asking again, a
changed prompt, prediction or judge is asked again, and `saved_replies` re-reads verdicts without calling anyone
(`eval --rescore ... --benchmark NAME`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.engines_openai import DEFAULT_API_KEY_ENV, OpenAIGenerator, RejectedAnswer
from ..files import JsonlWriter, read_jsonl

logger = logging.getLogger(__name__)

JUDGEMENTS_FILE = "judgements.jsonl"


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how it samples (the benchmarks' protocols fix model, temperature and samples)."""

    base_url: str
    model: str
    api_key_env: str = DEFAULT_API_KEY_ENV
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    max_concurrency: int = 8


def prompt_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def read_judgements(output_dir: str | Path) -> dict[str, dict]:
    """Saved judgements by item id (the last one per id wins: a re-asked item supersedes its stale reply)."""
    path = Path(output_dir) / JUDGEMENTS_FILE
    return {row["id"]: row for row in read_jsonl(path)} if path.exists() else {}


def judge_records(
    records: Sequence[dict],
    build_messages: Callable[[dict], list[dict] | None],
    settings: JudgeSettings,
    output_dir: str | Path,
) -> dict[str, list[str]]:
    """The judge's replies (`settings.samples` each) for every record `build_messages` gives a prompt to, asking
    only for those without a saved reply to the same prompt; returns replies by record id."""
    prompts = {r["id"]: messages for r in records if (messages := build_messages(r)) is not None}
    answered = saved_replies(records, build_messages, output_dir, settings.model)
    todo = [i for i in prompts if i not in answered]
    if todo:
        logger.info("asking the judge %s about %d item(s) (%d judged before)", settings.model, len(todo), len(answered))
        _ask(todo, prompts, settings, Path(output_dir) / JUDGEMENTS_FILE)
        answered = saved_replies(records, build_messages, output_dir, settings.model)
    return answered


def saved_replies(
    records: Sequence[dict], build_messages: Callable[[dict], list[dict] | None], output_dir, model: str | None = None
) -> dict[str, list[str]]:
    """Saved replies to exactly the prompts these records make now (by `model`, or by whichever judge answered)."""
    saved = read_judgements(output_dir)
    replies = {}
    for record in records:
        messages, row = build_messages(record), saved.get(record["id"])
        if messages is None or row is None or row["prompt_sha256"] != prompt_hash(messages):
            continue
        if model is None or row.get("judge_model") == model:
            replies[record["id"]] = row["replies"]
    return replies


def judge_model_of(output_dir) -> str | None:
    """The judge that answered the saved judgements (None when none are saved)."""
    models = {row.get("judge_model") for row in read_judgements(output_dir).values()}
    return ", ".join(sorted(m for m in models if m)) or None


def _ask(ids: list[str], prompts: dict[str, list[dict]], settings: JudgeSettings, path: Path) -> None:
    client = OpenAIGenerator.from_environment(
        settings.base_url,
        settings.model,
        settings.api_key_env,
        max_new_tokens=settings.max_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_concurrency=settings.max_concurrency,
        keep_truncated=True,
    )
    try:
        with JsonlWriter(path) as sink:
            for start in range(0, len(ids), 64):
                batch = ids[start : start + 64]
                conversations = [prompts[i] for i in batch]
                samples = [client.generate(conversations, seed=k) for k in range(settings.samples)]
                sink.write(
                    {
                        "id": i,
                        "judge_model": settings.model,
                        "prompt_sha256": prompt_hash(prompts[i]),
                        "replies": [_reply(s[n]) for s in samples],
                    }
                    for n, i in enumerate(batch)
                )
    finally:
        client.close()


def _reply(answer: str) -> str:
    """The judge's text; an empty or unusable answer is kept as "" (it parses to no verdict, and is counted)."""
    if isinstance(answer, RejectedAnswer):
        logger.warning("the judge gave no usable answer: %s", answer)
        return ""
    return str(answer)
