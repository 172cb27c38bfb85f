"""Fine-tuning with TRL's `SFTTrainer`: arguments, model and data set-up, and the audio collator."""

from .collator import BadRecordError, DestaSFTCollator
from .setup import (
    DestaScriptArguments,
    DestaSFTTrainer,
    build_trainer,
    freeze_for_sft,
    load_model_and_processor,
    load_sft_dataset,
    lora_config,
    resume_target,
    save_final_model,
)

__all__ = [
    "BadRecordError",
    "DestaSFTCollator",
    "DestaSFTTrainer",
    "DestaScriptArguments",
    "build_trainer",
    "freeze_for_sft",
    "load_model_and_processor",
    "load_sft_dataset",
    "lora_config",
    "resume_target",
    "save_final_model",
]
