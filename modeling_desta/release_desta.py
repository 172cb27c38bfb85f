"""The authors' release format (DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B) and the rules both halves share.

The release holds only what trained: `model.safetensors` with the connector's `perception.connector.*` tensors
and a `config.json` (`model_type` `desta25`) naming the LLM and the Whisper to fetch (`llm_model_id`,
`encoder_model_id`) plus `prompt_size`, `qformer_num_hidden_layers`, `placeholder_token`, `audio_locator`,
`connector_mode`, `use_lora`. This module reads that config, maps the connector keys strictly, fetches the
components with one clear error when one cannot be had, and holds the audio-token rule that the model's and the
processor's `from_components` share.

It imports only torch, transformers and the standard library, and no sibling: `processing/release_desta.py` is the
same file (a link), so that the processor half reads the release and picks the audio token by the same code,
in this repository and in a checkpoint folder where `save_pretrained` has laid both halves side by side.
"""

import json
import os

import torch
from transformers import AutoTokenizer
from transformers.utils import cached_file


class ReleaseFormatError(ValueError):
    """A checkpoint in the release format that this package cannot read: the message names the field, key or token."""


RELEASE_MODEL_TYPE = "desta25"
RELEASE_REPO_ID = "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B"
RELEASE_CONFIG_FILE = "config.json"
RELEASE_WEIGHTS = "model.safetensors"
REFERENCE_PREFIX = "perception.connector."
TARGET_PREFIX = "model.connector."
REQUIRED_REFERENCE_FIELDS = (
    "llm_model_id",
    "encoder_model_id",
    "prompt_size",
    "qformer_num_hidden_layers",
    "placeholder_token",
    "audio_locator",
)
SUPPORTED_CONNECTOR_MODE = "qformer_1"
# The reference's placeholder for Llama-3 tokenizers: an existing reserved token, so no embedding grows.
LLAMA3_AUDIO_TOKEN = "<|reserved_special_token_87|>"
# The audio token added to tokenizers without that reserved token; also the reference's data locator.
DEFAULT_AUDIO_TOKEN = "<|AUDIO|>"
REFERENCE_AUDIO_LOCATOR = "<|AUDIO|>"
# Text the release put around each audio span, and in place of the transcript of a clip without speech.
RELEASE_AUDIO_START_TEXT = "<start_audio>"
RELEASE_AUDIO_END_TEXT = "<end_audio>"
RELEASE_EMPTY_TRANSCRIPT = " "
# Encoder layers tapped by the reference for each Whisper size (0-based), told apart by encoder depth
# (large-v3-turbo keeps 32 encoder layers).
REFERENCE_AUDIO_LAYER_IDS = {
    "tiny": [0, 1, 2, 3],
    "small": [2, 5, 8, 11],
    "medium": [5, 11, 17, 23],
    "large": [7, 15, 23, 31],
}
WHISPER_SIZE_BY_ENCODER_LAYERS = {4: "tiny", 12: "small", 24: "medium", 32: "large"}
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
# `from_pretrained` keyword arguments that say where and how to fetch files; passed on to every component.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only")


def pick_audio_token(vocab: dict[str, int]) -> str:
    """The audio placeholder for a tokenizer with this vocabulary: the one rule of model and processor.

    The reference's `<|reserved_special_token_87|>` when the tokenizer has it (Llama 3), else `<|AUDIO|>`
    (added as a special token by whoever builds the processor, when missing).
    """
    return LLAMA3_AUDIO_TOKEN if LLAMA3_AUDIO_TOKEN in vocab else DEFAULT_AUDIO_TOKEN


def hub_kwargs(kwargs: dict) -> dict:
    """The fetching options among `from_pretrained` keyword arguments (what the components get too)."""
    return {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}


def read_config_dict(path_or_repo: str | os.PathLike, revision: str | None = None, **fetch_kwargs) -> dict | None:
    """`config.json` of a folder or Hub repo as a dict, or None where it has none (the caller decides)."""
    config_file = cached_file(
        path_or_repo,
        RELEASE_CONFIG_FILE,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **fetch_kwargs,
    )
    if config_file is None:
        return None
    with open(config_file, encoding="utf-8") as reader:
        return json.load(reader)


def is_release_config(config: dict | None) -> bool:
    return bool(config) and config.get("model_type") == RELEASE_MODEL_TYPE


def check_release_config(config: dict, source: str) -> dict:
    """The release's config, after checking it describes a connector this package reproduces."""
    missing = [field for field in REQUIRED_REFERENCE_FIELDS if config.get(field) in (None, "")]
    if missing:
        raise ReleaseFormatError(f"{source}/config.json lacks {missing}; is this a DeSTA2.5-Audio checkpoint?")
    mode = config.get("connector_mode", SUPPORTED_CONNECTOR_MODE)
    if mode != SUPPORTED_CONNECTOR_MODE:
        raise ReleaseFormatError(f"connector_mode={mode!r} is not supported; only {SUPPORTED_CONNECTOR_MODE!r} exists.")
    if config.get("use_lora"):
        raise ReleaseFormatError(
            "use_lora=true: LoRA weights on the LLM have no place here; only connector-only checkpoints load."
        )
    if config["audio_locator"] != REFERENCE_AUDIO_LOCATOR:
        # DestaProcessor reads reference-format messages by this locator; another one would go unrecognised.
        raise ReleaseFormatError(
            f"audio_locator={config['audio_locator']!r} is not {REFERENCE_AUDIO_LOCATOR!r}, the one DestaProcessor "
            "reads."
        )
    return config


def reference_audio_layer_ids(num_encoder_layers: int) -> list[int]:
    """The reference's taps for a Whisper of this depth; it supports no other Whisper sizes."""
    size = WHISPER_SIZE_BY_ENCODER_LAYERS.get(num_encoder_layers)
    if size is None:
        raise ValueError(
            f"A Whisper encoder with {num_encoder_layers} layers has no reference taps; the reference supports "
            f"{sorted(WHISPER_SIZE_BY_ENCODER_LAYERS)} layers ({', '.join(WHISPER_SIZE_BY_ENCODER_LAYERS.values())})."
        )
    return list(REFERENCE_AUDIO_LAYER_IDS[size])


def map_connector_state_dict(reference_state: dict[str, torch.Tensor], target_shapes: dict[str, torch.Size]) -> dict:
    """Reference tensors keyed for `model.model.connector.load_state_dict`, after checking every key both ways.

    `target_shapes` maps connector-relative names to shapes. Raises `ValueError` naming each reference
    key with no target, each target key no reference tensor fills, and each shape mismatch.
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
        raise ReleaseFormatError("The checkpoint does not match the connector:\n- " + "\n- ".join(errors))
    return mapped


def release_weights_file(path_or_repo: str | os.PathLike, revision: str | None = None, **fetch_kwargs) -> str:
    """Local path of the release's connector weights (fetched from the Hub when needed)."""
    return cached_file(path_or_repo, RELEASE_WEIGHTS, revision=revision, **fetch_kwargs)


def fetch_component(loader, repo_id: str, role: str, release: str, **kwargs):
    """`loader(repo_id, **kwargs)`, with a failure to fetch turned into one line naming the repo and the fix.

    transformers reports a gated repo (Llama 3.1 needs its license accepted), a missing repo or no network as an
    `OSError` of several lines; the first says what happened. (Errors here are plain `OSError` / `ValueError`:
    this file is loaded twice, as a sibling of each half, so classes of its own would not be one class.)
    """
    try:
        return loader(repo_id, **kwargs)
    except OSError as error:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        if "gated repo" in str(error):
            hint = f"access is gated: accept its licence at https://huggingface.co/{repo_id}, then log in with"
        else:
            hint = f"{reason.rstrip('.')}. A private or gated repo needs"
        raise OSError(
            f"cannot fetch {repo_id!r}, the {role} named by {release}: {hint} `hf auth login` (or token=...)."
        ) from error


def fetch_release_tokenizer(path_or_repo, release: dict | None, revision: str | None, fetch: dict):
    """(checked release config, the LLM's tokenizer) of a release checkpoint, fetched by its `llm_model_id`.

    The release's `placeholder_token` must already be in that tokenizer (the reference never adds it), else the
    checkpoint does not belong to that LLM.
    """
    source = str(path_or_repo)
    release = check_release_config(release or read_config_dict(path_or_repo, revision, **fetch) or {}, source)
    llm_id = str(release["llm_model_id"])
    tokenizer = fetch_component(AutoTokenizer.from_pretrained, llm_id, "LLM (llm_model_id)", source, **fetch)
    placeholder = release["placeholder_token"]
    if placeholder not in tokenizer.get_vocab():
        raise ReleaseFormatError(
            f"placeholder_token {placeholder!r} is not in the tokenizer of {llm_id}; the reference requires an "
            "existing token, so this checkpoint does not belong to that LLM."
        )
    return release, tokenizer
