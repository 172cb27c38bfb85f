"""The `openai` engine: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, `transformers serve`, a
load balancer in front of a fleet of them), with N requests in flight.

Transient failures (429, 5xx, timeouts, refused or dropped connections) are retried with exponential backoff and
jitter, honouring `Retry-After`; anything else, or a failure that outlasts the retries, raises `EngineError`. An
engine call returns every response of the batch or raises, and the builder writes a batch only when it is whole,
so a failure never writes a row twice or half: the rerun (or the next attempt) redoes the batch.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class EngineError(RuntimeError):
    """A request the server refused for good, or that kept failing after every retry."""


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server; the server applies the model's chat template.

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8000/v1` (`/chat/completions` is appended).
        model: the model name the server knows (`vllm serve NAME`, or the folder given to `transformers serve`).
        api_key: sent as a Bearer token when given (the CLI reads it from the environment, never a flag).
        max_concurrency: requests in flight at once (one thread each); give the builder batches at least this big.
        max_retries / backoff_s / max_backoff_s: retry budget for transient failures (exponential, jittered).
        timeout_s: per-request read timeout; long answers from a busy server need minutes.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_concurrency: int = 8,
        max_retries: int = 8,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 600.0,
    ):
        if max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be at least 1; got {max_concurrency}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.options = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    @classmethod
    def from_environment(cls, base_url: str, model: str, api_key_env: str = DEFAULT_API_KEY_ENV, **options):
        """The API key from environment variable `api_key_env` (none when it is unset, as local servers need)."""
        return cls(base_url, model, api_key=os.environ.get(api_key_env) or None, **options)

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        """One response per conversation, in order; row i is sampled with seed + i."""
        workers = min(self.max_concurrency, len(conversations)) or 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-engine") as pool:
            futures = [pool.submit(self.complete, c, seed + i) for i, c in enumerate(conversations)]
            return [future.result() for future in futures]

    def complete(self, messages: list[dict[str, str]], seed: int) -> str:
        body = {"model": self.model, "messages": messages, "seed": seed, "stream": False, **self.options}
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as error:  # refused, reset, timed out
                problem, retry_after = f"{type(error).__name__}: {error}", None
            else:
                if response.status_code == 200:
                    return response_text(response, self.url)
                if response.status_code not in RETRYABLE_STATUS:
                    raise EngineError(f"{self.url} answered HTTP {response.status_code}: {response.text[:500]}")
                problem, retry_after = f"HTTP {response.status_code}", response.headers.get("retry-after")
            if attempt == self.max_retries:
                raise EngineError(f"{self.url}: {problem}, still failing after {self.max_retries} retries")
            delay = self.retry_delay(attempt, retry_after)
            logger.warning("%s: %s; retry %d/%d in %.1f s", self.url, problem, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def retry_delay(self, attempt: int, retry_after: str | None) -> float:
        """Retry-After when the server gives seconds, else exponential backoff with full jitter."""
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.backoff_s * 2**attempt)

    def close(self) -> None:
        self.client.close()


def response_text(response: httpx.Response, url: str) -> str:
    try:
        return (response.json()["choices"][0]["message"]["content"] or "").strip()
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise EngineError(
            f"{url} returned no chat completion ({type(error).__name__}): {response.text[:500]}"
        ) from None
