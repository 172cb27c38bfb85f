"""The reusable parts of `train_sft.py`: model set-up, freezing, LoRA, dataset loading, trainer, final save.

DeSTA2.5-Audio trains only its connector: Whisper and the LLM stay frozen (optionally with LoRA adapters on
the LLM's attention projections). Everything here works with TRL's `SFTTrainer` as TRL 1.x wants an audio
model: own data collator, `remove_unused_columns=False`, `skip_prepare_dataset`, no trainer-side truncation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available
from trl import ScriptArguments, SFTConfig, SFTTrainer

from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor

from ..common import jsonl_dataset, load_dataset_from, resolve_dtype
from ..hub.card import write_model_card
from .collator import BAD_RECORD_POLICIES, PADDING_SIDES, DestaSFTCollator

logger = logging.getLogger(__name__)

# The LLM's attention projections, addressed only inside the language model: Whisper has q_proj/k_proj/v_proj too.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LLM_MODULE_PATTERN = r"model\.language_model\..*\."
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


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


class DestaSFTConfig(SFTConfig):
    """`SFTConfig` whose `--bf16` default follows the machine: TRL turns bf16 on everywhere, which ends a run on a
    machine without bfloat16 support in transformers' "Your setup doesn't support bf16/gpu" traceback.

    Left unset, bf16 is on where the GPU supports it and off elsewhere (float32; on CPU only when asked for, as
    autocast there is slow); one log line says which and why. An explicit `--bf16 true` that the machine cannot
    honour is a one-line error.
    """

    def __post_init__(self):
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


def default_bf16(fp16: bool, use_cpu: bool) -> tuple[bool, str]:
    """(bf16, the reason) when --bf16 is not given."""
    if fp16:
        return False, "--fp16 is set"
    if use_cpu:
        return False, "--use_cpu; pass --bf16 true for bfloat16 autocast on CPU"
    if is_torch_bf16_gpu_available():
        return True, "the GPU supports bfloat16; pass --bf16 false for float32"
    return False, "no GPU with bfloat16 support"


# ----------------------------------------------------------------------------- model


def load_model_and_processor(
    script_args: DestaScriptArguments, model_args, seed: int | None = None
) -> tuple[DestaForConditionalGeneration, DestaProcessor]:
    """From a Desta checkpoint (`--model_name_or_path`) or from components (`--llm` + `--whisper`, fresh connector).

    `seed` (the run's `--seed`) seeds the fresh connector's initialisation, so two identical runs are identical.
    """
    if seed is not None:
        set_seed(seed)
    dtype = resolve_dtype(model_args.dtype)
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


def connector_overrides(script_args: DestaScriptArguments) -> dict[str, Any]:
    overrides = {
        "num_audio_queries": script_args.num_audio_queries,
        "qformer_num_hidden_layers": script_args.qformer_num_hidden_layers,
        "qformer_intermediate_size": script_args.qformer_intermediate_size,
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


# ----------------------------------------------------------------------------- data


def load_sft_dataset(script_args: DestaScriptArguments):
    """A `DatasetDict` (or `IterableDatasetDict` when streaming) from a Hub id, a build_dataset.py folder,
    a `save_to_disk` folder, any local dataset folder, or `--data_files`."""
    import datasets

    name, files, streaming = script_args.dataset_name, script_args.data_files, script_args.dataset_streaming
    if missing := [f for f in files or [] if is_local_file_name(f) and not Path(f).is_file()]:
        raise FileNotFoundError(f"--data_files {missing[0]}: no such file")
    if files and all(Path(f).suffix.lower() == ".jsonl" for f in files) and name in (None, "json"):
        loaded = jsonl_dataset(files, streaming)
    elif files:
        builder = name or data_file_builder(files)
        loaded = datasets.load_dataset(
            builder, name=script_args.dataset_config, data_files=list(files), streaming=streaming
        )
    elif name is None:
        raise ValueError("Give --dataset_name (Hub id or folder) or --data_files.")
    else:
        loaded = load_dataset_from(name, script_args.dataset_config, streaming)
    return as_dataset_dict(loaded, script_args.dataset_train_split)


def is_local_file_name(name: str) -> bool:
    """Not a URL (hf://, https://) or a glob pattern, which `datasets` resolves itself."""
    return "://" not in name and not any(c in name for c in "*?[")


def data_file_builder(files: list[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {DATA_FILE_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"Cannot tell one datasets builder from the data file types {sorted(suffixes)}; give --dataset_name (e.g. json)."
        )
    return builders.pop()


def as_dataset_dict(loaded, split: str):
    import datasets

    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return loaded
    if isinstance(loaded, datasets.IterableDataset):
        return datasets.IterableDatasetDict({split: loaded})
    return datasets.DatasetDict({split: loaded})


# ----------------------------------------------------------------------------- trainer


class DestaSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose model card (written at each checkpoint, at the end and on push) describes DeSTA."""

    def __init__(self, *args, card_info: dict[str, Any] | None = None, **kwargs):
        self.card_info = dict(card_info or {})
        super().__init__(*args, **kwargs)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        if not self.is_world_process_zero():
            return
        info = {
            "repo_id": self.args.hub_model_id or Path(self.args.output_dir).name,
            **self.card_info,
            **run_summary(self),
            "audio_token": getattr(self.processing_class, "audio_token", None),
        }
        if dataset_name:
            info["dataset"] = dataset_name
        write_model_card(self.args.output_dir, self.model.config, info)


def prepare_training_args(training_args: SFTConfig) -> int | None:
    """Set what TRL needs for an audio collator; returns the `max_length` the collator enforces instead.

    DDP's search for unused parameters (TRL turns it on for processors, for text-only batches of
    vision models) is switched off unless asked for: the collator puts audio in every record, so every
    trainable parameter gets a gradient at every step.
    """
    max_length = training_args.max_length
    training_args.max_length = None
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False
    return max_length


def build_trainer(
    model,
    processor: DestaProcessor,
    training_args: SFTConfig,
    script_args: DestaScriptArguments,
    train_dataset,
    eval_dataset=None,
    peft_config=None,
    card_info: dict[str, Any] | None = None,
    callbacks=None,
) -> DestaSFTTrainer:
    collator = DestaSFTCollator(
        processor,
        audio_root=script_args.audio_root,
        audio_column=script_args.audio_column,
        max_length=prepare_training_args(training_args),
        padding_side=script_args.padding_side,
        on_bad_record=script_args.on_bad_record,
        seed=training_args.seed,
    )
    if script_args.on_bad_record == "skip":
        train_dataset = skip_bad_records(train_dataset, collator)
    return DestaSFTTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
        card_info=card_info,
    )


def skip_bad_records(train_dataset, collator: DestaSFTCollator):
    """Make `--on_bad_record skip` unable to end a run, whatever the batch size.

    The collator drops bad records; a batch left short (or empty) is topped up with good records drawn at random
    from a map-style dataset, so every step still trains on a full batch. A streamed dataset cannot be drawn from,
    so bad records are filtered out lazily before batching instead (their audio is decoded twice).
    """
    import datasets

    if isinstance(train_dataset, datasets.IterableDataset):
        return train_dataset.filter(collator.is_usable)
    collator.replacements = train_dataset
    return train_dataset


def resume_target(value: str | bool | None, output_dir: str | os.PathLike | None = None) -> str | bool | None:
    """`--resume_from_checkpoint true` means the latest *complete* checkpoint in --output_dir (the parser yields a
    string); a checkpoint cut short by a crash (no trainer state yet, or no weights) is skipped with a warning."""
    if isinstance(value, str) and value.lower() in ("false", "none", ""):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last", "latest")):
        return True if output_dir is None else latest_complete_checkpoint(output_dir)
    if value and (problem := checkpoint_problem(value)):
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint ({problem}); name an earlier checkpoint-N, "
            "or pass --resume_from_checkpoint true for the latest complete one."
        )
    return value


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    return checkpoint_problem(folder) is None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is no complete checkpoint, or None: the Trainer writes the trainer state last, so with it
    (readable) and weights, the save finished."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {TRAINER_STATE_NAME}"
    if not (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        return "no weights"
    return None


def check_checkpoint_files(checkpoint: str | os.PathLike | bool | None) -> None:
    """Refuse to resume from a checkpoint with a file cut short after the save (a full disk, a stopped copy): it
    is caught from its header or zip directory, without reading the weights, and named in one line."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return
    broken = [path.name for path in sorted(Path(checkpoint).iterdir()) if not _readable_checkpoint_file(path)]
    if broken:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: {', '.join(broken)} truncated or corrupt; name an earlier "
            "checkpoint-N, or move this one away and pass --resume_from_checkpoint true."
        )


def _readable_checkpoint_file(path: Path) -> bool:
    """safetensors: the header reads and covers the file; torch files (.pt, .pth, .bin): a whole zip archive."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt"):
                return True
        except (SafetensorError, OSError):
            return False
    if path.suffix in (".pt", ".pth", ".bin"):
        return zipfile.is_zipfile(path)
    return True


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = [
        (int(m.group(1)), p)
        for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if (m := pattern.match(p.name))
    ]
    return [path for _, path in sorted(found, reverse=True) if path.is_dir()]


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str:
    for folder in checkpoint_dirs(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("skipping %s: an incomplete checkpoint (%s; interrupted while saving?)", folder, problem)
    raise ValueError(f"--resume_from_checkpoint: no complete checkpoint in {output_dir}.")


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, overwrite: bool) -> None:
    """Refuse to train a fresh run into a folder that already holds a model or checkpoints (they would be
    overwritten or mixed), unless resuming or `--overwrite_output_dir`."""
    folder = Path(output_dir)
    if resuming or not folder.is_dir():
        return
    held = [
        name for name in ("config.json", "model.safetensors", "adapter_model.safetensors") if (folder / name).exists()
    ]
    held += [path.name for path in checkpoint_dirs(folder)][:3]
    if not held:
        return
    if not overwrite:
        raise ValueError(
            f"--output_dir {folder} already holds a model ({', '.join(held)}). Pass --overwrite_output_dir to replace "
            "it, --resume_from_checkpoint true to continue it, or choose another folder."
        )
    logger.warning("--overwrite_output_dir: training over the model in %s", folder)


def save_final_model(trainer: DestaSFTTrainer) -> Path:
    """Save `--output_dir` so that it loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` alone.

    With LoRA the adapter (and the trained connector) is kept in `OUTPUT/lora_adapter`, then merged into the
    LLM so the main folder holds plain weights. The merge needs whole weights on each process (DDP, ZeRO-2);
    under ZeRO-3 or FSDP merge the saved adapter afterwards.
    """
    output_dir = Path(trainer.args.output_dir)
    if _is_peft_model(trainer.model):
        trainer.save_model(str(output_dir / "lora_adapter"))
        trainer.model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if trainer.args.should_save:
            trainer.model.save_pretrained(output_dir)
            trainer.processing_class.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    trainer.create_model_card()
    skipped = getattr(trainer.data_collator, "skipped", None)
    if skipped:
        logger.warning("records skipped by this process's collator: %s", dict(skipped))
    return output_dir


def _is_peft_model(model) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


# ----------------------------------------------------------------------------- model card


def run_summary(trainer: SFTTrainer) -> dict[str, Any]:
    """This run's numbers for the card: optimiser steps, epochs, last logged training loss."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch}
    if losses:
        summary["final_loss"] = losses[-1]
    return summary


def card_info_from_args(script_args: DestaScriptArguments, model_args, training_args: SFTConfig) -> dict[str, Any]:
    return {
        "base_model": model_args.model_name_or_path,
        "llm": script_args.llm,
        "whisper": script_args.whisper,
        "dataset": script_args.dataset_name or ", ".join(script_args.data_files or []),
        "lora": bool(model_args.use_peft),
        "learning_rate": training_args.learning_rate,
        "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
        "license": script_args.license,
    }


def leave_distributed_run() -> None:
    """On several processes, exit right away, skipping Python's teardown (everything is saved by now).

    Freeing DDP's Reducer at exit can deadlock torch's gloo process group: its destructor joins a worker
    thread that is waiting for the GIL to free a finished all-gather. Seen on CPU in about one run in four
    with transformers 5.24; the run had finished and saved, but the rank never exited.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
