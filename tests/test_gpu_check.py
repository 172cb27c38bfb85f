"""benchmarks/gpu_check.sh has not run on a GPU here; what does not need one is checked: its options, configs and the
ASR part on tiny configs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

# Slow (real Whisper, subprocesses, servers or a browser): left out of the quick loop `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_release_shapes_from_configs():
    gpu_check = load_gpu_check()
    config = gpu_check.build_config(tiny=False)
    audio, text = config.audio_config, config.text_config
    assert (audio.d_model, audio.encoder_layers, audio.decoder_layers, audio.num_mel_bins) == (1280, 32, 32, 128)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (4096, 14336, 32)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (32, 8, 128256)
    assert config.audio_layer_ids == [7, 15, 23, 31] and config.qformer_num_hidden_layers == 6
    assert gpu_check.tiny_tokenizer().convert_ids_to_tokens(config.audio_token_id) == gpu_check.AUDIO_TOKEN


def test_options_and_tiny_mode_from_the_environment(monkeypatch):
    gpu_check = load_gpu_check()
    args = gpu_check.parse_args(["--batch-sizes", "1", "8", "--skip", "vllm"])
    assert (args.tiny, args.batch_sizes, args.skip, args.new_tokens) == (False, [1, 8], ["vllm"], 128)
    monkeypatch.setenv("GPU_CHECK_TINY", "1")
    assert gpu_check.parse_args([]).tiny
    tiny = gpu_check.build_config(tiny=gpu_check.parse_args([]).tiny)
    assert tiny.text_config.hidden_size == 64 and tiny.audio_config.num_mel_bins == 128


def test_shell_entry_point_prints_the_shapes():
    env = {**os.environ, "GPU_CHECK_TINY": "0"}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--configs-only"], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    shapes = json.loads(result.stdout[result.stdout.index("{") :])
    assert shapes["llm"] == {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}


def test_asr_part_runs_on_tiny_configs_and_both_paths_agree():
    gpu_check = load_gpu_check()
    config = gpu_check.build_config(tiny=True)
    model, _ = gpu_check.build_model(config, "cpu", torch.float32)
    rows = gpu_check.check_asr(model, gpu_check.build_processor(config), "cpu", [1, 2])
    assert [row["same_tokens_windows"] for row in rows] == ["1/1", "2/2"]
    assert all(row["lean_ms_per_step"] > 0 and row["generate_ms_per_step"] > 0 for row in rows)
    assert all(1 <= row["decode_steps"] <= gpu_check.ASR_NEW_TOKENS for row in rows)


def test_4bit_part_loads_the_saved_model_in_4bit_and_reports_the_goals(tmp_path):
    pytest.importorskip("bitsandbytes", reason="the [quantization] extra (bitsandbytes) is not installed")
    gpu_check = load_gpu_check()
    config = gpu_check.build_config(tiny=True)
    model, _ = gpu_check.build_model(config, "cpu", torch.float32)
    processor = gpu_check.build_processor(config)
    bf16_rows = gpu_check.check_pipeline(model, processor, "cpu", [1], new_tokens=3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    row = gpu_check.check_4bit(str(tmp_path), processor, "cpu", 3, bf16_rows)
    assert row["part"] == "pipeline batch 1, 4-bit nf4" and row["decode_tokens_per_s"] > 0
    assert row["linear4bit_layers"] > 0 and row["decode_vs_bf16"] > 0
    assert row["peak_gpu_gb"] is None and row["goals_met"] is None  # no GPU memory to hold against the goal on CPU
    assert gpu_check.parse_args(["--skip", "4bit"]).skip == ["4bit"]
