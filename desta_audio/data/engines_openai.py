"""The `openai` engine: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, `transformers serve`, a
load balancer in front of a fleet of them), with N requests in flight.

Transient failures (429, 5xx, timeouts, refused or dropped connections) are retried with exponential backoff and
jitter, honouring `Retry-After`; anything else, or a failure that outlasts the retries, raises `EngineError`. An
engine call returns every response of the batch or raises, and the builder writes a batch only when it is whole,
so a failure never writes a row twice or half: the rerun (or the next attempt) redoes the batch.

A server's answer is bounded: at most `max_response_bytes` are read, within `request_timeout_s` for the whole request
(a server that drips its body cannot hold a worker). An answer that is no usable training target (no content, not a
string, or cut by the token limit: `finish_reason` "length") is asked for once more, then returned as a
`RejectedAnswer` that the builder skips and counts; it never becomes a row.
"""

from __future__ import annotations

import json
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


class RejectedAnswer(str):
    """An answer that is not a usable training target; the string is the reason (the builder skips the row)."""


# A rejected answer is asked for once more (a sampling server may answer otherwise), then given up.
BAD_ANSWER_RETRIES = 1
DEFAULT_MAX_RESPONSE_BYTES = 8 * 2**20


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server; the server applies the model's chat template.

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8000/v1` (`/chat/completions` is appended).
        model: the model name the server knows (`vllm serve NAME`, or the folder given to `transformers serve`).
        api_key: sent as a Bearer token when given (the CLI reads it from the environment, never a flag).
        max_concurrency: requests in flight at once (one thread each); give the builder batches at least this big.
        max_retries / backoff_s / max_backoff_s: retry budget for transient failures (exponential, jittered).
        timeout_s: total seconds for one request (connect, wait, read); long answers from a busy server need minutes.
        max_response_bytes: largest response body read (a completion of `max_new_tokens` is a few kB).
        keep_truncated: keep answers cut at `max_new_tokens` (`finish_reason` "length") instead of rejecting them;
            for comparisons with an in-process engine, which keeps them.
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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        keep_truncated: bool = False,
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
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.keep_truncated = keep_truncated
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
        """The answer to one conversation, or a `RejectedAnswer` saying why it is not usable."""
        answer = RejectedAnswer("no answer")
        for _ in range(BAD_ANSWER_RETRIES + 1):
            answer = self._request(messages, seed)
            if not isinstance(answer, RejectedAnswer):
                return answer
            logger.warning("%s: %s", self.url, answer)
        return answer

    def _request(self, messages: list[dict[str, str]], seed: int) -> str:
        body = {"model": self.model, "messages": messages, "seed": seed, "stream": False, **self.options}
        return completion_text(self.post_with_retries(body), self.url, self.keep_truncated)

    def post_with_retries(self, body: dict) -> bytes:
        """The response body of a successful POST of `body`, retrying transient failures (jittered backoff)."""
        for attempt in range(self.max_retries + 1):
            try:
                status, headers, data = self._post(body)
            except httpx.TransportError as error:  # refused, reset, timed out
                problem, retry_after = f"{type(error).__name__}: {error}", None
            else:
                if status == 200:
                    return data
                if status not in RETRYABLE_STATUS:
                    raise EngineError(f"{self.url} answered HTTP {status}: {data[:500].decode(errors='replace')}")
                problem, retry_after = f"HTTP {status}", headers.get("retry-after")
            if attempt == self.max_retries:
                raise EngineError(f"{self.url}: {problem}, still failing after {self.max_retries} retries")
            delay = self.retry_delay(attempt, retry_after)
            logger.warning("%s: %s; retry %d/%d in %.1f s", self.url, problem, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, body: dict) -> tuple[int, httpx.Headers, bytes]:
        """(status, headers, body) of one POST, reading at most `max_response_bytes` within `timeout_s` in all."""
        deadline = time.monotonic() + self.timeout_s
        with self.client.stream("POST", self.url, json=body) as response:
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > self.max_response_bytes:
                    raise EngineError(
                        f"{self.url} sent a response over max_response_bytes={self.max_response_bytes}; a chat "
                        "completion is a few kB (is --base-url the API root?)."
                    )
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"the response took longer than {self.timeout_s:g} s in all")
            return response.status_code, response.headers, bytes(data)

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


def completion_text(data: bytes, url: str, keep_truncated: bool = False) -> str:
    """The answer of a chat completion body, or a `RejectedAnswer` naming what makes it unusable."""
    try:
        choice = json.loads(data)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise EngineError(
            f"{url} returned no chat completion ({type(error).__name__}): {data[:500].decode(errors='replace')}"
        ) from None
    if not isinstance(content, str):
        return RejectedAnswer(f"the answer's content is {type(content).__name__}, not text")
    if choice.get("finish_reason") == "length" and not keep_truncated:
        return RejectedAnswer(
            "the answer was cut at the token limit (finish_reason 'length'); raise --max-new-tokens (or --keep-truncated-answers)"
        )
    if not content.strip():
        return RejectedAnswer("the answer is empty")
    return content.strip()
