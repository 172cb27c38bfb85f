"""The typed arguments of `train_sft.py` (beside TRL's `SFTConfig` and `ModelConfig`): data, model and connector
options, and the precision default (bf16 only where the device supports it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available
from trl import ScriptArguments, SFTConfig

from .collator import BAD_RECORD_POLICIES, PADDING_SIDES

logger = logging.getLogger(__name__)


@dataclass
class DestaScriptArguments(ScriptArguments):
    """Data and model-construction arguments of `train_sft.py` (TRL's `ScriptArguments` plus DeSTA's own)."""

    data_files: list[str] | None = field(
        default=None,
        metadata={"help": "Data files (JSON Lines, Parquet, CSV, Arrow) to train on, alone or with --dataset_name."},
    )
    audio_root: str | None = field(
        default=None, metadata={"help": "Folder that relative audio paths in the records are relative to."}
    )
    audio_column: str = field(
        default="audio",
        metadata={
            "help": "Record column whose audio fills audio items that carry none (e.g. a datasets Audio column)."
        },
    )
    llm: str | None = field(
        default=None, metadata={"help": "Causal LM (Hub id or folder) for a fresh model; use with --whisper."}
    )
    whisper: str | None = field(
        default=None, metadata={"help": "Whisper model (Hub id or folder) for a fresh model; use with --llm."}
    )
    num_audio_queries: int = field(default=64, metadata={"help": "Fresh connector: vectors per 30 s window."})
    qformer_num_hidden_layers: int = field(default=6, metadata={"help": "Fresh connector: Q-Former depth."})
    qformer_intermediate_size: int = field(default=3072, metadata={"help": "Fresh connector: feed-forward width."})
    audio_layer_ids: list[int] | None = field(
        default=None,
        metadata={"help": "Fresh connector: 0-based Whisper encoder layers to tap (default: 4 evenly spaced)."},
    )
    audio_tap_layer_norm: bool = field(
        default=False,
        metadata={"help": "Fresh connector: taps through Whisper's final layer norm (the release: raw taps)."},
    )
    qformer_mask_padding: bool = field(
        default=False,
        metadata={"help": "Fresh connector: ignore the positions of Whisper's window padding (the release: all)."},
    )
    qformer_audio_queries: bool = field(
        default=False,
        metadata={"help": "Fresh connector: queries start from each clip's mean tap state (not in the release)."},
    )
    max_transcript_tokens: int | None = field(
        default=100, metadata={"help": "Cap on each transcript's LLM tokens (the release used 100)."}
    )
    on_bad_record: str = field(
        default="error",
        metadata={
            "help": "A record with missing/undecodable audio, no audio, or over --max_length: 'error' stops with its "
            "id, 'skip' drops it with a warning and counts it. Records are never truncated.",
            "choices": list(BAD_RECORD_POLICIES),
        },
    )
    padding_side: str = field(
        default="right", metadata={"help": "Padding side of training batches.", "choices": list(PADDING_SIDES)}
    )
    license: str = field(
        default="other", metadata={"help": "License named in the model card (the base models' terms apply)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that already holds a model or checkpoints (they are replaced)."},
    )


def check_model_source(script_args: DestaScriptArguments, model_args) -> None:
    """Refuse a model source that names too much or too little, before any data or weights are read: a Desta
    checkpoint to continue (`--model_name_or_path`), or an LLM and a Whisper for a fresh connector, never both."""
    checkpoint, llm, whisper = model_args.model_name_or_path, script_args.llm, script_args.whisper
    components = " and ".join(f"--{name} {value}" for name, value in (("llm", llm), ("whisper", whisper)) if value)
    if checkpoint and components:
        raise ValueError(
            f"--model_name_or_path {checkpoint} and {components} both name the model to train: give "
            "--model_name_or_path (a Desta checkpoint to continue) or --llm and --whisper (a fresh connector), not both."
        )
    if checkpoint:
        return
    if not components:
        raise ValueError("Give --model_name_or_path (a Desta checkpoint), or --llm and --whisper (a fresh connector).")
    if not (llm and whisper):
        missing = "--whisper" if llm else "--llm"
        raise ValueError(f"{components} needs {missing} too: a fresh connector joins an LLM and a Whisper.")


# transformers 5.24 renamed TrainingArguments' `gradient_checkpointing` to `activation_checkpointing` and warns when
# the old name is set, which TRL's SFTConfig does on every run (its default is True); 5.19 knows only the old name.
HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}


@dataclass
class DestaSFTConfig(SFTConfig):
    """`SFTConfig` whose `--bf16` default follows the machine: TRL turns bf16 on everywhere, which ends a run on a
    machine without bfloat16 support in transformers' "Your setup doesn't support bf16/gpu" traceback.

    Left unset, bf16 is on where the GPU supports it and off elsewhere (float32; on CPU only when asked for, as
    autocast there is slow); one log line says which and why. An explicit `--bf16 true` that the machine cannot
    honour is a one-line error.

    `--activation_checkpointing` (and TRL's `--gradient_checkpointing`) work on every supported transformers: the
    value goes to the name the installed version reads (`checkpointing_by_installed_name`), so none warns.
    """

    if not HAS_ACTIVATION_CHECKPOINTING:
        activation_checkpointing: bool | None = field(
            default=None,
            metadata={"help": "Recompute activations in the backward pass to save memory (gradient_checkpointing)."},
        )

    def __post_init__(self):
        self.checkpointing_by_installed_name()
        if self.bf16 is None:
            self.bf16, why = default_bf16(self.fp16, self.use_cpu)
        elif self.bf16 and not (self.use_cpu or is_torch_bf16_gpu_available() or is_torch_xla_available()):
            raise ValueError(
                "--bf16 true: this machine has no GPU with bfloat16 support; pass --bf16 false to train in float32, "
                "or --use_cpu true for bfloat16 autocast on CPU"
            )
        else:
            why = f"--bf16 {str(self.bf16).lower()}"
        precision = "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"
        logger.info("precision: %s (%s)", precision, why)
        super().__post_init__()

    def checkpointing_by_installed_name(self) -> None:
        """Set activation checkpointing under the name the installed transformers reads: `activation_checkpointing`
        where it exists (from `--gradient_checkpointing` or TRL's default when it is not given), else
        `gradient_checkpointing` (from `--activation_checkpointing` when it is given)."""
        if HAS_ACTIVATION_CHECKPOINTING:
            if self.activation_checkpointing is None:
                self.activation_checkpointing = self.gradient_checkpointing
        elif self.activation_checkpointing is not None:
            self.gradient_checkpointing = self.activation_checkpointing


def default_bf16(fp16: bool, use_cpu: bool) -> tuple[bool, str]:
    """(bf16, the reason) when --bf16 is not given."""
    if fp16:
        return False, "--fp16 is set"
    if use_cpu:
        return False, "--use_cpu; pass --bf16 true for bfloat16 autocast on CPU"
    if is_torch_bf16_gpu_available():
        return True, "the GPU supports bfloat16; pass --bf16 false for float32"
    return False, "no GPU with bfloat16 support"
