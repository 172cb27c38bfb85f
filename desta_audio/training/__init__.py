"""Fine-tuning with TRL's `SFTTrainer`, one module per concern: `arguments` (typed script arguments and the precision
default), `model` (load, freeze, LoRA), `data` (the training data), `collator` (audio batches with response-only
labels), `trainer` (the trainer, the final save, the distributed exit) and `checkpoints` (resume and overwrite)."""

from .arguments import DestaScriptArguments, DestaSFTConfig, check_model_source, default_bf16
from .checkpoints import (
    check_checkpoint_files,
    check_output_dir,
    is_complete_checkpoint,
    latest_complete_checkpoint,
    resume_target,
)
from .collator import BadRecordError, DestaSFTCollator
from .data import load_sft_dataset
from .model import freeze_for_sft, load_model_and_processor, lora_config, trainable_parameter_names
from .trainer import (
    DestaSFTTrainer,
    build_trainer,
    card_info_from_args,
    check_distributed_launch,
    leave_distributed_run,
    save_final_model,
    skip_bad_records,
)

__all__ = [
    "BadRecordError",
    "DestaSFTCollator",
    "DestaSFTConfig",
    "DestaSFTTrainer",
    "DestaScriptArguments",
    "build_trainer",
    "card_info_from_args",
    "check_checkpoint_files",
    "check_distributed_launch",
    "check_model_source",
    "check_output_dir",
    "default_bf16",
    "freeze_for_sft",
    "is_complete_checkpoint",
    "latest_complete_checkpoint",
    "leave_distributed_run",
    "load_model_and_processor",
    "load_sft_dataset",
    "lora_config",
    "resume_target",
    "save_final_model",
    "skip_bad_records",
    "trainable_parameter_names",
]
