"""Every shipped accelerate config (recipes/accelerate/) trains train_sft.py on 2 processes, saves a folder that
`from_pretrained` loads, and resumes from a checkpoint to the same losses and weights as the uninterrupted run.

On a machine without GPUs the configs run over gloo: DDP with `--use_cpu true`, DeepSpeed ZeRO-2/3 on its CPU
accelerator with `--ddp_backend gloo` (not `--use_cpu`, which makes accelerate drop DeepSpeed). FSDP needs GPUs:
accelerate drops the FSDP plugin on CPU, so its test runs where 2 GPUs are visible; train_sft.py refuses the CPU
launches that accelerate would silently turn into something else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, free_port
from test_train_sft import CPU_TRAINING, SUBPROCESS_ENV, run, write_jsonl

from desta_audio.testing import sft_record

CONFIGS = REPO_ROOT / "recipes" / "accelerate"
ON_GPUS = torch.cuda.device_count() >= 2
# What each config needs on a machine without GPUs; a config missing here runs on GPUs only.
CPU_FLAGS = {
    "ddp.yaml": ["--use_cpu", "true", *CPU_TRAINING],
    "deepspeed_zero2.yaml": ["--ddp_backend", "gloo", *CPU_TRAINING],
    "deepspeed_zero3.yaml": ["--ddp_backend", "gloo", *CPU_TRAINING],
}
PROCESSES, PER_DEVICE, RECORDS = 2, 2, 8
TRAINING = "--max_steps 4 --save_steps 2 --logging_steps 1 --seed 0 --report_to none --disable_tqdm true".split()


def launch_command(config: str, *script_args: str, flags: list[str] | None = None) -> list[str]:
    """`accelerate launch --config_file recipes/accelerate/CONFIG` on 2 processes; `flags` default to what the config
    needs on this machine (fp32 and CPU_FLAGS without GPUs)."""
    on_cpu = ["--mixed_precision", "no"] if not ON_GPUS else []
    if flags is None:
        flags = [] if ON_GPUS else CPU_FLAGS[config]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--num_processes", str(PROCESSES), "--main_process_port", str(free_port()), *on_cpu,
        "train_sft.py", *script_args, *flags,
    ]  # fmt: skip


def config_params() -> list:
    """Every shipped config; one that cannot run on this machine is skipped with the reason."""
    params = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        runnable = ON_GPUS or path.name in CPU_FLAGS
        reason = "accelerate runs FSDP on GPUs only (its FSDP plugin is dropped on CPU); needs 2 GPUs"
        params.append(pytest.param(path.name, marks=() if runnable else pytest.mark.skip(reason=reason)))
    return params


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory) -> Path:
    """A build_dataset.py-style folder of JSONL records with audio paths relative to --audio_root."""
    folder = tmp_path_factory.mktemp("distributed_data")
    rows = [
        sft_record(f"r{i}", name, f"It is {kind}.")
        for i, (name, kind) in enumerate([("hello.wav", "speech"), ("tone.wav", "a tone")] * (RECORDS // 2))
    ]
    write_jsonl(folder / "records" / "shard-00000-of-00001.jsonl", rows)
    return folder


def train(config: str, model_dir: Path, records_dir: Path, audio_dir: Path, output: Path, *extra: str) -> Path:
    data = ["--dataset_name", str(records_dir), "--audio_root", str(audio_dir)]
    batch = ["--per_device_train_batch_size", str(PER_DEVICE)]
    source = ["--model_name_or_path", str(model_dir), "--output_dir", str(output)]
    run(launch_command(config, *source, *data, *batch, *TRAINING, *extra), cwd=REPO_ROOT, timeout=300)
    return output


def losses_by_step(folder: Path) -> dict[int, float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.mark.slow
@pytest.mark.parametrize("config", config_params())
def test_config_trains_saves_a_loadable_folder_and_resumes_to_the_same_loss(
    config, saved_model_dir, records_dir, audio_dir, tmp_path
):
    from transformers import AutoModel

    whole = train(config, saved_model_dir, records_dir, audio_dir, tmp_path / "whole")
    resumed = train(
        config, saved_model_dir, records_dir, audio_dir, tmp_path / "resumed",
        "--resume_from_checkpoint", str(whole / "checkpoint-2"),
    )  # fmt: skip

    uninterrupted, continued = losses_by_step(whole / "checkpoint-4"), losses_by_step(resumed / "checkpoint-4")
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    assert [continued[step] for step in (3, 4)] == pytest.approx([uninterrupted[step] for step in (3, 4)], rel=1e-5)
    # Both processes shared the data: 4 steps x 2 processes x 2 records = two epochs of the 8 records.
    state = json.loads((whole / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(4 * PROCESSES * PER_DEVICE / RECORDS)
    if config.startswith("deepspeed"):
        assert (whole / "checkpoint-2" / "global_step2").is_dir()  # the DeepSpeed engine's own checkpoint

    # The folders load with from_pretrained; ZeRO-3's consolidated save names some tensors the legacy way
    # (LayerNorm gamma/beta, language_model.model.*), which loading maps back: compare loaded models, not files.
    trained, again, start = (
        AutoModel.from_pretrained(folder, trust_remote_code=True).state_dict()
        for folder in (whole, resumed, saved_model_dir)
    )
    connector = {name for name in trained if ".connector." in name}
    assert connector and all(torch.equal(trained[name], again[name]) for name in connector)
    assert any(not torch.equal(trained[name], start[name]) for name in connector)
    assert all(torch.equal(trained[name], start[name]) for name in trained.keys() - connector)


def launch_error(config: str, *script_args: str, flags: list[str] | None = None) -> str:
    """Run a launch that must stop before reading any data; return its stderr."""
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}
    command = launch_command(config, *script_args, "--dataset_name", "unused", "--output_dir", "unused", flags=flags)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0, result.stderr[-3000:]  # the launcher exits 1 when a rank exits 2
    return result.stderr


@pytest.mark.slow
@pytest.mark.skipif(ON_GPUS, reason="the refusals concern machines without GPUs")
@pytest.mark.parametrize(
    "config, flags, message",
    [
        ("fsdp.yaml", ["--use_cpu", "true"], "FSDP runs on GPUs only"),
        ("deepspeed_zero2.yaml", ["--use_cpu", "true"], "DeepSpeed ignores --use_cpu"),
        ("ddp.yaml", [], "2 processes were launched but no GPU was found"),
    ],
)
def test_a_cpu_launch_that_accelerate_would_silently_change_is_refused(config, flags, message, saved_model_dir):
    stderr = launch_error(config, "--model_name_or_path", str(saved_model_dir), flags=flags + CPU_TRAINING)
    assert f"train_sft.py: error: {message}" in stderr


@pytest.mark.slow
@pytest.mark.skipif(ON_GPUS, reason="the refusal is the same on GPUs; the CPU launch is cheaper")
def test_zero3_with_a_fresh_connector_names_the_fix(llm_dir, whisper_dir):
    stderr = launch_error("deepspeed_zero3.yaml", "--llm", str(llm_dir), "--whisper", str(whisper_dir))
    assert "train_sft.py: error: Under DeepSpeed ZeRO-3 a fresh connector" in stderr
    assert "--model_name_or_path DIR" in stderr


FSDP2_SAVE = """
import os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1")
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from desta_audio.training.trainer import saved_as_its_own_class
from modeling_desta import DestaForConditionalGeneration
dist.init_process_group("gloo")
model = DestaForConditionalGeneration.from_pretrained(sys.argv[1])
fully_shard(model)
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
with saved_as_its_own_class(model):
    model.save_pretrained(sys.argv[2], state_dict=state)
assert isinstance(model, FSDPModule)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_an_fsdp2_sharded_model_saves_a_folder_that_loads_with_remote_code(saved_model_dir, tmp_path):
    """What the Trainer's FSDP save does (save_pretrained on the sharded model with the gathered weights), on one CPU
    process: the folder holds modeling_desta.py, not torch's FSDP files, and `auto_map` names DeSTA's classes."""
    from transformers import AutoModel

    output = tmp_path / "saved"
    command = [sys.executable, "-c", FSDP2_SAVE, str(saved_model_dir), str(output), str(free_port())]
    run(command, cwd=tmp_path, timeout=300)
    assert (output / "modeling_desta.py").exists() and not list(output.glob("_fsdp*.py"))
    auto_map = json.loads((output / "config.json").read_text())["auto_map"]
    assert all("FSDP" not in target for target in auto_map.values()), auto_map
    loaded = AutoModel.from_pretrained(output, trust_remote_code=True).state_dict()
    start = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True).state_dict()
    assert loaded.keys() == start.keys() and all(torch.equal(loaded[k], start[k]) for k in start)
