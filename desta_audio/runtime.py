"""Running a model: the device and dtype by name, the pipeline from a checkpoint or an in-memory model, answers
streamed from a worker thread, and batching in fixed-size chunks."""

from __future__ import annotations

import importlib
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


# `--quantize` names: bitsandbytes 4-bit (nf4) and 8-bit (LLM.int8), torchao int8 weight-only.
QUANTIZATION_LIBRARIES = {"4bit": "bitsandbytes", "8bit": "bitsandbytes", "int8": "torchao"}
QUANTIZATION_EXTRA = "pip install 'desta-audio[quantization]'"


def quantization_config(name: str | None, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """The transformers quantization config for a `--quantize` name (None: none), checked against the device.

    The LLM's and Whisper's linear layers are quantized; the connector never is (the model's
    `_keep_in_fp32_modules`). 4-bit computes in `dtype` (bfloat16 on a GPU that has it, else float32 when "auto").
    """
    if name is None:
        return None
    if name not in QUANTIZATION_LIBRARIES:
        raise ValueError(f"unknown quantization {name!r}; use one of {', '.join(QUANTIZATION_LIBRARIES)}")
    device = resolve_device(device)
    check_quantization_platform(name, device)
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if name == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if name == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=four_bit_compute_dtype(device, dtype),
    )


def four_bit_compute_dtype(device: torch.device, dtype: str | torch.dtype) -> torch.dtype:
    resolved = resolve_dtype(dtype)
    if isinstance(resolved, torch.dtype):
        return resolved
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def check_quantization_platform(name: str, device: torch.device, flag: str | None = None) -> None:
    """A clear error, naming the fix, when `name`'s library is missing or does not run on `device`.

    `flag` is the option that asked (default `--quantize NAME`); only `--quantize` can switch to torchao instead.
    """
    library = QUANTIZATION_LIBRARIES[name]
    asked = flag or f"--quantize {name}"
    try:
        module = importlib.import_module(library)
    except ImportError as error:
        raise ValueError(f"{asked} needs {library}, which is not installed: {QUANTIZATION_EXTRA}") from error
    supported = getattr(module, "supported_torch_devices", None)  # bitsandbytes lists the backends it was built with
    if supported is not None and device.type not in supported:
        instead = "" if flag else ", or --quantize int8 (torchao)"
        raise ValueError(
            f"{asked}: bitsandbytes {getattr(module, '__version__', '')} does not run on {device.type} (it supports "
            f"{', '.join(sorted(supported))}); use --device {' or '.join(sorted(supported))}{instead}"
        )


def quantized_load_kwargs(quantize: str | None, device: str, dtype: str) -> dict:
    """`from_pretrained` keyword arguments for a quantized load: the config, and the device as a `device_map`
    (a quantized model is placed while it loads; moving it afterwards is not supported by bitsandbytes 8-bit)."""
    config = quantization_config(quantize, device, dtype)
    return {"quantization_config": config, "device_map": str(resolve_device(device))}


def load_pipeline(model, processor=None, device: str = "auto", dtype: str = "auto", quantize: str | None = None):
    """The audio-text-to-text pipeline for a folder / Hub id, an in-memory model + processor, or a ready pipeline.

    The tools run this installed package's classes, not the checkpoint's copy of them (remote code): one set of
    classes, so `except AudioTooLongError` and `isinstance(policy, AudioSourcePolicy)` mean what they say.
    `quantize` (`4bit`, `8bit`, `int8`) loads a folder or Hub id quantized (see `quantization_config`).
    """
    if isinstance(model, Pipeline):
        return model
    if isinstance(model, (str, os.PathLike)):
        placement = (
            {"model_kwargs": quantized_load_kwargs(quantize, device, dtype)}
            if quantize
            else {"device": resolve_device(device)}
        )
        return pipeline(
            "audio-text-to-text",
            model=os.fspath(model),
            pipeline_class=DestaAudioTextToTextPipeline,
            trust_remote_code=False,
            dtype=dtype,
            **placement,
        )
    if quantize:
        raise ValueError("quantize= applies to a model loaded here; quantize an in-memory model when loading it.")
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
