"""TRL's `SFTTrainer` as TRL 1.x wants an audio model (own data collator, `remove_unused_columns=False`,
`skip_prepare_dataset`, no trainer-side truncation), the final save with its model card, the refusal of a
launch that accelerate would silently change, and a clean exit from a distributed run."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trl import SFTConfig, SFTTrainer

from processing import DestaProcessor

from ..hub.card import write_model_card
from .arguments import DestaScriptArguments
from .collator import DestaSFTCollator

logger = logging.getLogger(__name__)


class DestaSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose model card (written at each checkpoint, at the end and on push) describes DeSTA, and whose
    connector stays float32 under QLoRA (TRL casts every trainable parameter of a quantized model to bfloat16, the
    QLoRA paper's choice for adapters; the connector's master weights are float32, as in every other run)."""

    def __init__(self, *args, card_info: dict[str, Any] | None = None, **kwargs):
        self.card_info = dict(card_info or {})
        super().__init__(*args, **kwargs)
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad and ".connector." in name:
                parameter.data = parameter.data.float()

    def _save(self, output_dir: str | None = None, state_dict=None):
        with saved_as_its_own_class(self.model):
            super()._save(output_dir, state_dict=state_dict)

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


@contextmanager
def saved_as_its_own_class(model):
    """Let an FSDP2-sharded model save as the class it was built from.

    `fully_shard` turns a model's class into torch's `FSDP<Class>`; `save_pretrained` would then copy torch's
    `_fsdp_*.py` files as the folder's remote code (instead of `modeling_desta.py`) and name `FSDP<Class>` in
    `auto_map`, so the folder would not load with `trust_remote_code=True`. The gathered weights are the same.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(cls for cls in sharded.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded


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


def save_final_model(trainer: DestaSFTTrainer) -> Path:
    """Save `--output_dir` so that it loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` alone.

    With LoRA the adapter (and the trained connector) is kept in `OUTPUT/lora_adapter`, then merged into the
    LLM so the main folder holds plain weights. The merge needs whole weights on each process (DDP, ZeRO-2);
    under ZeRO-3 or FSDP merge the saved adapter afterwards.
    """
    output_dir = Path(trainer.args.output_dir)
    if _is_peft_model(trainer.model) and _is_quantized(trainer.accelerator.unwrap_model(trainer.model)):
        # Merging into 4-/8-bit weights rounds them again (the answers change): keep the adapter, with the connector.
        trainer.save_model(str(output_dir / "lora_adapter"))
        if trainer.args.should_save:
            trainer.processing_class.save_pretrained(output_dir)
        logger.info(
            "QLoRA: load the base model, then PeftModel.from_pretrained(model, %s)", output_dir / "lora_adapter"
        )
    elif _is_peft_model(trainer.model):
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


def _is_quantized(peft_model) -> bool:
    return getattr(peft_model.get_base_model(), "hf_quantizer", None) is not None


def _is_peft_model(model) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


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


def check_distributed_launch(script_args: DestaScriptArguments, training_args: SFTConfig) -> None:
    """Refuse a launch that accelerate would silently turn into something else, before any data is read.

    accelerate enables FSDP only on accelerators: on CPU ranks the FSDP plugin is dropped and the run is plain DDP.
    DeepSpeed is dropped too when `--use_cpu` is given (it runs on CPU over gloo without it, with `--ddp_backend
    gloo`). Without `--use_cpu` or a backend, ranks on a machine without GPUs each train alone into the same folder.
    Under ZeRO-3, transformers loads every model partitioned, and a bare Whisper's weight initialisation fails on a
    partitioned position table (transformers 5.25), so the fresh connector must be saved first.
    """
    from accelerate.utils import parse_flag_from_env
    from transformers.integrations import is_deepspeed_zero3_enabled

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    on_cpu = training_args.device.type == "cpu"
    if parse_flag_from_env("ACCELERATE_USE_FSDP") and on_cpu:
        raise ValueError(
            "FSDP runs on GPUs only: accelerate drops the FSDP plugin on CPU and this run would be plain data parallel. "
            "On CPU launch with recipes/accelerate/ddp.yaml and --use_cpu true."
        )
    if getattr(training_args, "deepspeed_plugin", None) is not None and training_args.use_cpu:
        raise ValueError(
            "DeepSpeed ignores --use_cpu (accelerate would run plain data parallel): on a machine without GPUs drop "
            "--use_cpu and pass --ddp_backend gloo."
        )
    if launched > 1 and training_args.world_size != launched:
        raise ValueError(
            f"{launched} processes were launched but no GPU was found, so each would train alone: pass --use_cpu true "
            "(data parallel over gloo), or --ddp_backend gloo with a DeepSpeed config."
        )
    if is_deepspeed_zero3_enabled() and script_args.llm:
        raise ValueError(
            "Under DeepSpeed ZeRO-3 a fresh connector (--llm/--whisper) cannot be built: save it first "
            "(DestaForConditionalGeneration.from_components(...).save_pretrained(DIR), or a short run under "
            "recipes/accelerate/ddp.yaml), then pass --model_name_or_path DIR."
        )


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
