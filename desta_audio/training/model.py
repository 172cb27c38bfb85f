"""The model to fine-tune: loaded or assembled with its processor, frozen but for the connector, and the optional
LoRA adapters on the LLM's attention projections (Whisper and the LLM stay frozen, as in the release)."""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from transformers import set_seed

from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor

from ..runtime import check_quantization_platform, resolve_dtype
from .arguments import DestaScriptArguments

logger = logging.getLogger(__name__)

# The LLM's attention projections, addressed only inside the language model: Whisper has q_proj/k_proj/v_proj too.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LLM_MODULE_PATTERN = r"model\.language_model\..*\."


def load_model_and_processor(
    script_args: DestaScriptArguments, model_args, seed: int | None = None
) -> tuple[DestaForConditionalGeneration, DestaProcessor]:
    """From a Desta checkpoint (`--model_name_or_path`) or from components (`--llm` + `--whisper`, fresh connector).

    `seed` (the run's `--seed`) seeds the fresh connector's initialisation, so two identical runs are identical.
    """
    if seed is not None:
        set_seed(seed)
    dtype = resolve_dtype(model_args.dtype)
    quantization = quantized_llm_kwargs(model_args)
    if quantization and not model_args.model_name_or_path:
        raise ValueError(
            "QLoRA (--load_in_4bit/--load_in_8bit) saves adapters for a base model that loads again by name: save the "
            "fresh model first (DestaForConditionalGeneration.from_components(...).save_pretrained(DIR)) and pass "
            "--model_name_or_path DIR."
        )
    if model_args.model_name_or_path:
        if script_args.llm or script_args.whisper:
            raise ValueError("Give either --model_name_or_path or --llm and --whisper, not both.")
        revision = model_args.model_revision
        processor = DestaProcessor.from_pretrained(model_args.model_name_or_path, revision=revision)
        model = DestaForConditionalGeneration.from_pretrained(
            model_args.model_name_or_path,
            revision=revision,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            **quantization,
        )
    elif script_args.llm and script_args.whisper:
        processor = DestaProcessor.from_components(
            script_args.llm, script_args.whisper, num_audio_queries=script_args.num_audio_queries
        )
        model = DestaForConditionalGeneration.from_components(
            script_args.llm,
            script_args.whisper,
            processor=processor,
            dtype=dtype,
            **connector_overrides(script_args),
        )
        if model_args.attn_implementation:
            model.set_attn_implementation(model_args.attn_implementation)
    else:
        raise ValueError("Give --model_name_or_path (a Desta checkpoint), or --llm and --whisper (a fresh connector).")
    processor.max_transcript_tokens = script_args.max_transcript_tokens
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor


def quantized_llm_kwargs(model_args) -> dict[str, Any]:
    """`from_pretrained` keywords for TRL's `--load_in_4bit` / `--load_in_8bit` (QLoRA), or {} without them.

    The quantization config is TRL's own (`get_quantization_config`: `--bnb_4bit_quant_type`,
    `--use_bnb_nested_quant`, ...); the connector is never quantized (the model's `_keep_in_fp32_modules`). A flag
    that cannot be honoured is an error, never a silent full-precision run: a quantized LLM trains only through
    adapters (HF's Trainer refuses a purely quantized model), and bitsandbytes must run on this machine.
    """
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return {}
    from accelerate import PartialState
    from trl import get_quantization_config

    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if not model_args.use_peft:
        raise ValueError(f"{flag} trains LoRA adapters on the quantized LLM (QLoRA): add --use_peft true.")
    state = PartialState()
    check_quantization_platform("4bit" if model_args.load_in_4bit else "8bit", state.device, flag)
    config = get_quantization_config(model_args)
    if model_args.load_in_4bit and not isinstance(config.bnb_4bit_compute_dtype, torch.dtype):
        config.bnb_4bit_compute_dtype = torch.float32  # TRL passes --dtype through, "auto" included
    # Each process holds its own copy on its own device (DDP); on a CPU the quantizer places it there itself.
    device_map = {"": state.local_process_index} if state.device.type == "cuda" else None
    return {"quantization_config": config, "device_map": device_map}


def connector_overrides(script_args: DestaScriptArguments) -> dict[str, Any]:
    overrides = {
        "num_audio_queries": script_args.num_audio_queries,
        "qformer_num_hidden_layers": script_args.qformer_num_hidden_layers,
        "qformer_intermediate_size": script_args.qformer_intermediate_size,
        "audio_tap_layer_norm": script_args.audio_tap_layer_norm,
        "qformer_mask_padding": script_args.qformer_mask_padding,
        "qformer_audio_queries": script_args.qformer_audio_queries,
    }
    if script_args.audio_layer_ids is not None:
        overrides["audio_layer_ids"] = list(script_args.audio_layer_ids)
    return overrides


def freeze_for_sft(model: DestaForConditionalGeneration) -> DestaForConditionalGeneration:
    """Freeze Whisper, the LLM and its head; train the connector, kept in float32 as master weights.

    With a bfloat16 checkpoint the frozen parts stay bfloat16 (half the memory) while the optimiser updates
    float32 connector weights; under `--bf16` autocast still runs the connector's matmuls in bfloat16.
    """
    model.requires_grad_(False)
    connector = model.model.connector
    connector.requires_grad_(True)
    connector.float()
    return model


def trainable_parameter_names(model: torch.nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def lora_config(model_args):
    """LoRA on the LLM only (the connector stays fully trainable through `modules_to_save`), or None.

    `--lora_target_modules` names module suffixes (default: the attention projections); they are matched
    inside `model.language_model` only, so Whisper's identically named projections stay frozen.
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    targets = model_args.lora_target_modules or DEFAULT_LORA_TARGETS
    options = {"target_parameters": model_args.lora_target_parameters} if model_args.lora_target_parameters else {}
    return LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=LLM_MODULE_PATTERN + "(" + "|".join(re.escape(t) for t in targets) + ")",
        modules_to_save=["connector", *(model_args.lora_modules_to_save or [])],
        bias="none",
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        **options,
    )
