"""A DeSTA served behind an OpenAI-compatible endpoint (vLLM with this package's plugin), called like the pipeline.

`desta-audio eval --base-url` runs a benchmark through it: each chat goes out as one chat completion (audio as
`input_audio`, transcripts as `mm_processor_kwargs`, greedy), `max_concurrency` at a time, with the dataset
builder's transport (retries, size and time caps). With the checkpoint's tokenizer at hand, answers are decoded
from the returned token ids exactly as the pipeline decodes them, so a served run's predictions equal an
in-process run's; without it, the server's text is used.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from ..data.engines_openai import DEFAULT_API_KEY_ENV, EngineError, OpenAIGenerator
from .openai_content import openai_messages


class ServedPipeline:
    """`pipe(conversations, max_new_tokens=..., do_sample=False)` -> `[{"generated_text", "transcripts"}]`."""

    def __init__(self, base_url: str, model: str, tokenizer=None, api_key_env: str = DEFAULT_API_KEY_ENV, **transport):
        """`transport`: `OpenAIGenerator`'s options (concurrency, retries, time and size caps); the key is read from
        the environment variable `api_key_env`, never passed around."""
        self.client = OpenAIGenerator.from_environment(base_url, model, api_key_env, keep_truncated=True, **transport)
        self.tokenizer = tokenizer
        # What `run_benchmark` records as the model of a run (a served run never resumes an in-process one).
        self.model = SimpleNamespace(name_or_path=f"{model} @ {base_url}")

    def __call__(self, conversations: list, batch_size: int | None = None, max_new_tokens: int = 256, **options):
        if options.get("do_sample"):
            raise ValueError("A served benchmark run is greedy; do_sample=True is not supported.")
        workers = min(self.client.max_concurrency, len(conversations)) or 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="served-pipeline") as pool:
            return list(pool.map(lambda c: self.ask(c, max_new_tokens), conversations))

    def ask(self, conversation: list[dict], max_new_tokens: int) -> dict:
        messages, transcripts = openai_messages(conversation)
        body = {"model": self.client.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0}
        if any(transcript is not None for transcript in transcripts):
            body["mm_processor_kwargs"] = {"transcripts": transcripts}
        if self.tokenizer is not None:
            body["return_token_ids"] = True
        data = self.client.post_with_retries(body)
        try:
            choice = json.loads(data)["choices"][0]
            text = choice["message"]["content"] or ""
            if self.tokenizer is not None:
                text = self.tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise EngineError(f"{self.client.url} returned no usable chat completion ({error!r})") from None
        return {"generated_text": text.strip(), "transcripts": transcripts}
