#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "desta-audio[train]",
#     "trl>=1.0",
#     "peft>=0.15",
#     "transformers>=5.0,<6",
#     "accelerate>=1.0",
#     "datasets>=4.0",
#     "torchcodec",
#     "soundfile",
#     "soxr",
# ]
# ///

"""
Fine-tune DeSTA2.5-Audio with TRL's SFTTrainer: Whisper and the LLM frozen, the Q-Former connector trained
(optionally LoRA on the LLM), labels on the response tokens only. Library: `desta_audio.training`. Guide: docs/training.md.

# The release recipe (recipes/desta25_sft.yaml), fresh connector, data from build_dataset.py
```bash
accelerate launch --config_file recipes/accelerate/ddp.yaml train_sft.py \
    --config recipes/desta25_sft.yaml \
    --llm meta-llama/Llama-3.1-8B-Instruct --whisper openai/whisper-large-v3 \
    --dataset_name out/ --audio_root /data/audio \
    --output_dir desta25-sft
```

# Continue from a Desta checkpoint, LoRA on the LLM, DeSTA-AQA5M-style records from the Hub
```bash
python train_sft.py --model_name_or_path path/or/hub-id \
    --dataset_name DeSTA-ntu/DeSTA-AQA5M --audio_root /data/aqa5m \
    --use_peft --lora_r 16 --lora_alpha 32 \
    --learning_rate 1e-4 --per_device_train_batch_size 12 --output_dir desta25-lora
```

# Scale out (each takes the same script arguments)
```bash
accelerate launch --config_file recipes/accelerate/ddp.yaml             train_sft.py --config recipes/desta25_sft.yaml ...
accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml train_sft.py --config recipes/desta25_sft.yaml ...
accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml train_sft.py --config recipes/desta25_sft.yaml ...
accelerate launch --config_file recipes/accelerate/fsdp.yaml            train_sft.py --config recipes/desta25_sft.yaml ...
accelerate launch --multi_gpu --num_processes 2 train_sft.py --use_cpu true --bf16 false ...           # 2 CPU processes (gloo)
```

Resume: add `--resume_from_checkpoint true` (latest in --output_dir) or `--resume_from_checkpoint DIR/checkpoint-N`.
Without `--bf16` the run is bfloat16 where the GPU supports it, float32 elsewhere (the log says which); on CPU
also pass `--activation_checkpointing false` (TRL's default is on). `accelerate launch --cpu --num_processes 2`
starts a single process (accelerate's simple launcher ignores the count without MPI).
A user error ends in one line `train_sft.py: error: ...` (exit code 2); `--debug` shows the traceback instead.
"""

import logging
import sys

from trl import ModelConfig, SFTConfig, TrlParser

from desta_audio import training as sft
from desta_audio.errors import report_errors

logger = logging.getLogger("train_sft")


def main(script_args: sft.DestaScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    sft.check_model_source(script_args, model_args)  # every argument is checked before any data is read
    sft.check_distributed_launch(script_args, training_args)
    resume = sft.resume_target(training_args.resume_from_checkpoint, training_args.output_dir)
    sft.check_checkpoint_files(resume)
    sft.check_output_dir(training_args.output_dir, bool(resume), script_args.overwrite_output_dir)
    dataset = sft.load_sft_dataset(script_args)  # before the model: a data mistake is named in seconds
    model, processor = sft.load_model_and_processor(script_args, model_args, seed=training_args.seed)
    sft.freeze_for_sft(model)

    train_dataset = dataset[script_args.dataset_train_split]
    eval_dataset = dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None

    trainer = sft.build_trainer(
        model,
        processor,
        training_args,
        script_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=sft.lora_config(model_args),
        card_info=sft.card_info_from_args(script_args, model_args, training_args),
    )
    logger.info("trainable parameters: %d", sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))

    train(trainer, resume)
    output_dir = sft.save_final_model(trainer)
    logger.info("model saved to %s", output_dir)

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        logger.info("model pushed to https://huggingface.co/%s", trainer.hub_model_id)
    trainer.end()
    sft.leave_distributed_run()


def train(trainer, resume) -> None:
    """`trainer.train`, with a bad record (under the default --on_bad_record error) named with what to do."""
    try:
        trainer.train(resume_from_checkpoint=resume)
    except sft.BadRecordError as error:
        raise ValueError(
            f"{error}; fix or remove that record, or pass --on_bad_record skip to drop (and count) such records"
        ) from error


def make_parser() -> TrlParser:
    return TrlParser((sft.DestaScriptArguments, sft.DestaSFTConfig, ModelConfig))


def take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove this script's bare `--debug` (show tracebacks) from `argv`. TrainingArguments has a `--debug OPTIONS`
    of its own (underflow_overflow, tpu_metrics_debug): a `--debug` followed by a value is left to it."""
    rest, debug = [], False
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--debug" and (following is None or following.startswith("-")):
            debug = True
        else:
            rest.append(arg)
    return rest, debug


def run(argv: list[str] | None = None) -> int:
    argv, debug = take_debug_flag(sys.argv[1:] if argv is None else argv)
    return report_errors("train_sft.py", lambda: main(*make_parser().parse_args_and_config(argv)), debug)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run())
