"""Running a model: the device and dtype by name, the pipeline from a checkpoint or an in-memory model, answers
streamed from a worker thread, and batching in fixed-size chunks."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import Pipeline, TextIteratorStreamer, pipeline

import modeling_desta  # noqa: F401  (registers the `desta` config and model with the Auto classes)
from processing import DestaAudioTextToTextPipeline

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` (or None) is the first GPU when there is one, else the CPU; anything else is taken as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r} ({error}); use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu or auto"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """A dtype name (`float32`, `bfloat16`, `float16`) as a torch dtype; `"auto"`, None and dtypes pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_pipeline(model, processor=None, device: str = "auto", dtype: str = "auto"):
    """The audio-text-to-text pipeline for a folder / Hub id, an in-memory model + processor, or a ready pipeline.

    The tools run this installed package's classes, not the checkpoint's copy of them (remote code): one set of
    classes, so `except AudioTooLongError` and `isinstance(policy, AudioSourcePolicy)` mean what they say.
    """
    if isinstance(model, Pipeline):
        return model
    if isinstance(model, (str, os.PathLike)):
        return pipeline(
            "audio-text-to-text",
            model=os.fspath(model),
            pipeline_class=DestaAudioTextToTextPipeline,
            trust_remote_code=False,
            device=resolve_device(device),
            dtype=dtype,
        )
    if processor is None:
        raise ValueError("An in-memory model needs its processor.")
    return DestaAudioTextToTextPipeline(
        model=model, processor=processor, device=None if device == "auto" else resolve_device(device)
    )


class AnswerStream:
    """Iterate for the answer's text pieces as `generate` makes them; `result` holds the pipeline's output after.

    The pipeline runs on a thread feeding a `TextIteratorStreamer`; an error there is re-raised by the iteration.
    """

    def __init__(self, pipe, conversation: list[dict], kwargs: dict):
        self.streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.result: dict = {}
        self._errors: list[Exception] = []
        self._thread = threading.Thread(target=self._run, args=(pipe, conversation, kwargs), daemon=True)
        self._thread.start()

    def _run(self, pipe, conversation, kwargs) -> None:
        try:
            self.result.update(pipe(conversation, streamer=self.streamer, **kwargs))
        except Exception as error:
            self._errors.append(error)
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        yield from self.streamer
        self._thread.join()
        if self._errors:
            raise self._errors[0]


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of `size` (itertools.batched needs Python 3.12)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
