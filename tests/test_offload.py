"""`device_map="auto"` with `max_memory` and `offload_folder`: the model is split at whole Whisper layers, LLM decoder
layers and the connector, offloaded to CPU and disk, and gives the same greedy tokens as without offload (the real
small model, with audio, so Whisper and the connector run from the offloaded weights)."""

from __future__ import annotations

import re

import pytest
import torch

from desta_audio import testing as tiny_assets
from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor

# device_map entries never go deeper than these: each names one module that must stay whole.
WHOLE_MODULES = (
    r"model\.audio_tower\.model\.(encoder|decoder)\.layers\.\d+",
    r"model\.language_model\.layers\.\d+",
    r"model\.connector",
)


def test_no_split_modules_keep_the_layers_and_the_connector_whole(tiny_parts):
    model, _ = tiny_parts
    assert {"DestaConnector", "WhisperEncoderLayer", "WhisperDecoderLayer", "LlamaDecoderLayer"} <= set(
        model._no_split_modules
    )


def assert_split_only_between_whole_modules(device_map: dict[str, str]) -> None:
    for name in device_map:
        inside = [pattern for pattern in WHOLE_MODULES if re.match(pattern + r"\.", name)]
        assert not inside, f"{name} splits a module kept whole ({inside[0]})"


@pytest.fixture(scope="module")
def small_desta():
    from desta_audio.small.desta import cached_small_desta

    return cached_small_desta()


@pytest.fixture(scope="module")
def audio_inputs(small_desta):
    processor = DestaProcessor.from_pretrained(small_desta)
    clip = {"type": "audio", "array": tiny_assets.sine(2.0), "sampling_rate": 16000, "transcript": "hello"}
    conversation = [{"role": "user", "content": [clip, {"type": "text", "text": "What is said?"}]}]
    return processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.fixture(scope="module")
def reference_tokens(small_desta, audio_inputs):
    model = DestaForConditionalGeneration.from_pretrained(small_desta)
    return model.generate(**audio_inputs, max_new_tokens=8, do_sample=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cpu_budget", "expect"),
    [
        ("100MB", {"disk"}),  # everything on disk
        ("160MB", {"cpu", "disk"}),  # Whisper's encoder in memory, the connector and the LLM on disk
        ("400MB", {"cpu", "disk"}),  # the LLM split between decoder layers
    ],
)
def test_offloaded_model_gives_the_same_greedy_tokens(
    cpu_budget, expect, small_desta, audio_inputs, reference_tokens, tmp_path
):
    model = DestaForConditionalGeneration.from_pretrained(
        small_desta, device_map="auto", max_memory={"cpu": cpu_budget}, offload_folder=tmp_path
    )
    assert set(model.hf_device_map.values()) == expect
    assert_split_only_between_whole_modules(model.hf_device_map)
    tokens = model.generate(**audio_inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(tokens, reference_tokens)
