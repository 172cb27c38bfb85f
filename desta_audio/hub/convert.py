"""Convert a checkpoint in the released DeSTA2.5-Audio format into a self-contained checkpoint of this package.

The release (DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B) holds only what trained: `model.safetensors` with the
connector's `perception.connector.*` tensors, and a `config.json` naming the LLM and the Whisper to fetch
(`llm_model_id`, `encoder_model_id`) plus `prompt_size`, `qformer_num_hidden_layers`, `placeholder_token`,
`audio_locator`, `connector_mode`, `use_lora`. This script fetches both components, builds
`DestaForConditionalGeneration.from_components`, maps every connector tensor by the prefix rename
`perception.connector.` -> `model.connector.` (an unmapped, missing or misshapen key is an error naming it),
loads it strictly, and writes model + processor (+ model card) into one folder that loads with
`trust_remote_code=True` alone:

    desta-audio convert --checkpoint DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B --output out/ \\
        [--push-to-hub you/DeSTA2.5-Audio-Llama-3.1-8B] [--dtype bfloat16] [--facts facts.yaml]
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import AutoTokenizer, WhisperConfig

from modeling_desta import DestaForConditionalGeneration
from modeling_desta.configuration_desta import REFERENCE_AUDIO_LAYER_IDS
from processing import DEFAULT_SYSTEM_PROMPT, DestaProcessor
from processing.processing_desta import REFERENCE_AUDIO_LOCATOR

from .card import render_model_card

logger = logging.getLogger(__name__)

RELEASE_REPO_ID = "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B"
REFERENCE_PREFIX = "perception.connector."
TARGET_PREFIX = "model.connector."
REFERENCE_WEIGHTS = "model.safetensors"
REQUIRED_REFERENCE_FIELDS = (
    "llm_model_id",
    "encoder_model_id",
    "prompt_size",
    "qformer_num_hidden_layers",
    "placeholder_token",
    "audio_locator",
)
SUPPORTED_CONNECTOR_MODE = "qformer_1"
# The reference builds its Q-Former from a default `BertConfig()` and overrides only depth, heads, width and
# cross-attention; these are the defaults it keeps. Its projection LayerNorm is PyTorch's default (eps 1e-5).
REFERENCE_QFORMER_SETTINGS = {
    "qformer_intermediate_size": 3072,
    "qformer_hidden_act": "gelu",
    "qformer_hidden_dropout_prob": 0.1,
    "qformer_attention_dropout_prob": 0.1,
    "qformer_layer_norm_eps": 1e-12,
    "projector_layer_norm_eps": 1e-5,
}
# Whisper sizes the reference supports, told apart by encoder depth (large-v3-turbo keeps 32 encoder layers).
WHISPER_SIZE_BY_ENCODER_LAYERS = {4: "tiny", 12: "small", 24: "medium", 32: "large"}
# What a component repo needs here: configs, the default safetensors weights, tokenizer and chat-template files;
# never the pickled, original-format or other-precision duplicates (e.g. `model.fp32-*`) some repos also carry.
COMPONENT_FILES = [
    "*.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "*.txt",
    "*.jinja",
    "*.model",
    "*.tiktoken",
]
CHECKPOINT_FILES = ["config.json", REFERENCE_WEIGHTS]

# Model-card facts of the release: its recipe (paper, arXiv 2507.02768, training set-up) and the authors' published numbers (1.4).
RELEASE_FACTS = {
    "model_name": "DeSTA2.5-Audio-Llama-3.1-8B",
    "license": "llama3.1",
    "datasets": ["DeSTA-ntu/DeSTA-AQA5M-FROM-Llama3.1-8B-Instruct"],
    "training": {
        "steps": "5 epochs at 96 samples per step (about 258.5 k steps over the 4,963,845 rows)",
        "loss": "not published",
        "trained_parameters": "connector only (queries, layer weights, Q-Former, projection); LoRA off",
        "optimizer": "AdamW, lr 1e-4, betas (0.9, 0.98), weight decay 0.01",
        "schedule": "cosine with 5000 warm-up steps",
        "gradient_clipping": "1.0",
        "precision": "bf16 mixed",
        "batch": "12 per GPU x 8 GPUs, at most 300 tokens",
    },
    "evaluation": {
        "source": (
            "Numbers published by the authors for this release (arXiv 2507.02768; greedy decoding; MMAU scored "
            "by string match after stripping the answer prefix). They were not re-measured after conversion."
        ),
        "results": [
            {"benchmark": "MMAU v05.15.25 test-mini, sound", "metric": "accuracy (%)", "score": "70.57"},
            {"benchmark": "MMAU v05.15.25 test-mini, speech", "metric": "accuracy (%)", "score": "71.17"},
            {"benchmark": "MMAU v05.15.25 test-mini, music", "metric": "accuracy (%)", "score": "56.29"},
            {"benchmark": "MMAU v05.15.25 test-mini, average", "metric": "accuracy (%)", "score": "66.00"},
            {"benchmark": "Dynamic-SUPERB phase 1", "metric": "accuracy (%)", "score": "69.53"},
            {"benchmark": "SAKURA multi-hop", "metric": "accuracy (%)", "score": "69.85"},
            {"benchmark": "Speech-IFEval", "metric": "IFrate (%)", "score": "93.89"},
            {"benchmark": "MMAR", "metric": "accuracy (%)", "score": "50.8"},
        ],
    },
}


class ConversionError(ValueError):
    """The checkpoint does not convert; the message names what is wrong (keys, fields, components)."""


def resolve_folder(repo_or_dir: str | os.PathLike, allow_patterns: list[str]) -> Path:
    """A local folder as is, else a Hub snapshot of the files matching `allow_patterns`."""
    path = Path(repo_or_dir)
    if path.is_dir():
        return path
    logger.info("Fetching %s from the Hub", repo_or_dir)
    return Path(snapshot_download(str(repo_or_dir), allow_patterns=allow_patterns))


def read_reference_config(folder: Path) -> dict:
    """The release's `config.json`, after checking it describes a connector this converter reproduces."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    missing = [field for field in REQUIRED_REFERENCE_FIELDS if config.get(field) in (None, "")]
    if missing:
        raise ConversionError(f"{folder / 'config.json'} lacks {missing}; is this a DeSTA2.5-Audio checkpoint?")
    mode = config.get("connector_mode", SUPPORTED_CONNECTOR_MODE)
    if mode != SUPPORTED_CONNECTOR_MODE:
        raise ConversionError(f"connector_mode={mode!r} is not supported; only {SUPPORTED_CONNECTOR_MODE!r} exists.")
    if config.get("use_lora"):
        raise ConversionError(
            "use_lora=true: LoRA weights on the LLM have no place here; only connector-only checkpoints convert."
        )
    if config["audio_locator"] != REFERENCE_AUDIO_LOCATOR:
        # DestaProcessor reads reference-format messages by this locator; another one would go unrecognised.
        raise ConversionError(
            f"audio_locator={config['audio_locator']!r} is not {REFERENCE_AUDIO_LOCATOR!r}, the one DestaProcessor reads."
        )
    return config


def reference_audio_layer_ids(num_encoder_layers: int) -> list[int]:
    """The reference's taps for a Whisper of this depth; it supports no other Whisper sizes."""
    size = WHISPER_SIZE_BY_ENCODER_LAYERS.get(num_encoder_layers)
    if size is None:
        raise ConversionError(
            f"A Whisper encoder with {num_encoder_layers} layers has no reference taps; the reference supports "
            f"{sorted(WHISPER_SIZE_BY_ENCODER_LAYERS)} layers ({', '.join(WHISPER_SIZE_BY_ENCODER_LAYERS.values())})."
        )
    return list(REFERENCE_AUDIO_LAYER_IDS[size])


def map_connector_state_dict(reference_state: dict[str, torch.Tensor], target_shapes: dict[str, torch.Size]) -> dict:
    """Reference tensors keyed for `model.model.connector.load_state_dict`, after checking every key both ways.

    `target_shapes` maps connector-relative names to shapes. Raises `ConversionError` naming each reference key
    with no target, each target key no reference tensor fills, and each shape mismatch.
    """
    mapped, unmapped = {}, []
    for key, tensor in reference_state.items():
        relative = key.removeprefix(REFERENCE_PREFIX)
        if key.startswith(REFERENCE_PREFIX) and relative in target_shapes:
            mapped[relative] = tensor
        else:
            unmapped.append(key)
    missing = [TARGET_PREFIX + name for name in target_shapes if name not in mapped]
    mismatched = [
        f"{REFERENCE_PREFIX}{name} {tuple(tensor.shape)} -> {TARGET_PREFIX}{name} {tuple(target_shapes[name])}"
        for name, tensor in mapped.items()
        if tensor.shape != target_shapes[name]
    ]
    errors = [f"unmapped checkpoint key: {key}" for key in sorted(unmapped)]
    errors += [f"missing from checkpoint: {key}" for key in missing]
    errors += [f"shape mismatch: {line}" for line in mismatched]
    if errors:
        raise ConversionError("The checkpoint does not match the connector:\n- " + "\n- ".join(errors))
    return mapped


def build_processor(llm_dir: Path, whisper_dir: Path, reference: dict) -> DestaProcessor:
    """The processor of the release: its placeholder token, its text markers and its system prompt."""
    placeholder = reference["placeholder_token"]
    if placeholder not in AutoTokenizer.from_pretrained(llm_dir).get_vocab():
        raise ConversionError(
            f"placeholder_token {placeholder!r} is not in the tokenizer of {reference['llm_model_id']}; the reference "
            "requires an existing token, so this checkpoint does not belong to that LLM."
        )
    return DestaProcessor.from_components(
        llm_dir,
        whisper_dir,
        audio_token=placeholder,
        num_audio_queries=int(reference["prompt_size"]),
        audio_start_text="<start_audio>",
        audio_end_text="<end_audio>",
        default_system_prompt=DEFAULT_SYSTEM_PROMPT,
        # The reference's data and inference put " " where a clip has no speech: one real token.
        empty_transcript=" ",
    )


def build_model(
    llm_dir: Path, whisper_dir: Path, reference: dict, processor: DestaProcessor, dtype
) -> DestaForConditionalGeneration:
    """Our model around the fetched LLM and Whisper, with the reference's connector settings set explicitly."""
    whisper_config = WhisperConfig.from_pretrained(whisper_dir)
    model = DestaForConditionalGeneration.from_components(
        llm_dir,
        whisper_dir,
        processor=processor,
        dtype=dtype,
        audio_layer_ids=reference_audio_layer_ids(whisper_config.encoder_layers),
        qformer_num_hidden_layers=int(reference["qformer_num_hidden_layers"]),
        qformer_num_attention_heads=whisper_config.encoder_attention_heads,
        **REFERENCE_QFORMER_SETTINGS,
    )
    # Name the components as the release does (Hub ids), not by the local snapshot paths they loaded from.
    model.config.text_config._name_or_path = str(reference["llm_model_id"])
    model.config.audio_config._name_or_path = str(reference["encoder_model_id"])
    return model.eval()


def load_connector(model: DestaForConditionalGeneration, reference_state: dict[str, torch.Tensor]) -> None:
    connector = model.model.connector
    target_shapes = {name: tensor.shape for name, tensor in connector.state_dict().items()}
    connector.load_state_dict(map_connector_state_dict(reference_state, target_shapes), strict=True)
    logger.info("Loaded all %d connector tensors (%s* -> %s*)", len(target_shapes), REFERENCE_PREFIX, TARGET_PREFIX)


def convert(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str | int = "5GB",
    facts: dict | None = None,
    repo_id: str | None = None,
) -> Path:
    """Convert `checkpoint` (Hub id or folder in the release format) into `output`; returns `output`.

    README.md is written when there are card facts: `facts`, or the release's own when converting the release.
    `repo_id` is where the card's usage snippets point (default: `output`).
    """
    checkpoint_dir = resolve_folder(checkpoint, CHECKPOINT_FILES)
    reference = read_reference_config(checkpoint_dir)
    reference_state = load_file(checkpoint_dir / REFERENCE_WEIGHTS)
    llm_dir = resolve_folder(reference["llm_model_id"], COMPONENT_FILES)
    whisper_dir = resolve_folder(reference["encoder_model_id"], COMPONENT_FILES)

    processor = build_processor(llm_dir, whisper_dir, reference)
    model = build_model(llm_dir, whisper_dir, reference, processor, dtype)
    load_connector(model, reference_state)

    output = Path(output)
    model.save_pretrained(output, max_shard_size=max_shard_size)
    processor.save_pretrained(output)
    card_facts = facts if facts is not None else (RELEASE_FACTS if str(checkpoint) == RELEASE_REPO_ID else None)
    if card_facts is None:
        logger.warning("No model-card facts for %s: README.md not written (pass facts to write it).", checkpoint)
    else:
        card = render_model_card(
            model, {"audio_token": processor.audio_token, **card_facts, "repo_id": repo_id or str(output)}
        )
        (output / "README.md").write_text(card, encoding="utf-8")
    logger.info("Wrote %s (taps %s, %s)", output, model.config.audio_layer_ids, model.dtype)
    return output
