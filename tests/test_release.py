"""The authors' release format loads as it is, through every entry point, and equals its conversion.

The release folder is built offline in the release's own layout (the reference's `config.json` fields,
`perception.connector.*` tensors) with local component paths standing in for the Hub ids.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import GatedRepoError
from safetensors.torch import load_file, save_file
from test_hub import PLACEHOLDER, PROMPT_SIZE, reference_state_dict, write_reference_checkpoint
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, pipeline
from transformers.utils import hub as transformers_hub

from desta_audio import testing as tiny_assets
from desta_audio.cli import main as cli_main
from desta_audio.hub.convert import convert
from modeling_desta import DestaForConditionalGeneration
from modeling_desta.release_desta import (
    DEFAULT_AUDIO_TOKEN,
    LLAMA3_AUDIO_TOKEN,
    pick_audio_token,
)
from processing import DEFAULT_SYSTEM_PROMPT, DestaProcessor

# Part of the short suite run on the oldest supported transformers too (`pytest -m compat`).
pytestmark = pytest.mark.compat

GATED_LLM = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, llm_dir, whisper_dir) -> Path:
    whisper_config = json.loads((whisper_dir / "config.json").read_text())
    llm_config = json.loads((llm_dir / "config.json").read_text())
    state = reference_state_dict(
        whisper_config["d_model"], llm_config["hidden_size"], whisper_config["encoder_attention_heads"], seed=1
    )
    return write_reference_checkpoint(tmp_path_factory.mktemp("release"), state, llm_dir, whisper_dir)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, release_dir):
    folder = convert(release_dir, tmp_path_factory.mktemp("converted"), dtype=torch.float32)
    return folder, DestaForConditionalGeneration.from_pretrained(folder).eval(), DestaProcessor.from_pretrained(folder)


def conversation(audio_dir) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(audio_dir / "tone.wav"), "transcript": "a tone"},
                {"type": "audio", "path": str(audio_dir / "silence.wav"), "transcript": ""},
                {"type": "text", "text": "What do you hear?"},
            ],
        }
    ]


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    "load",
    [AutoModel.from_pretrained, AutoModelForCausalLM.from_pretrained, DestaForConditionalGeneration.from_pretrained],
    ids=["AutoModel", "AutoModelForCausalLM", "DestaForConditionalGeneration"],
)
def test_release_loads_with_the_converted_logits(load, release_dir, converted, audio_dir):
    _, converted_model, converted_processor = converted
    model = load(release_dir)
    assert isinstance(model, DestaForConditionalGeneration) and not model.training
    assert model.config.num_audio_queries == PROMPT_SIZE and model.config.audio_layer_ids == [0, 1, 2, 3]
    inputs = converted_processor.apply_chat_template(
        conversation(audio_dir), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ours, expected = logits(model, inputs), logits(converted_model, inputs)
    assert torch.equal(ours, expected)
    assert expected.std() > 0.1


def test_release_processor_is_the_reference_prompt_format(release_dir, converted, audio_dir):
    _, _, converted_processor = converted
    processor = AutoProcessor.from_pretrained(release_dir)
    assert isinstance(processor, DestaProcessor)
    assert processor.audio_token == PLACEHOLDER == LLAMA3_AUDIO_TOKEN
    assert (processor.default_system_prompt, processor.empty_transcript) == (DEFAULT_SYSTEM_PROMPT, " ")
    assert processor.num_audio_queries == PROMPT_SIZE
    text = processor.apply_chat_template(conversation(audio_dir), tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + DEFAULT_SYSTEM_PROMPT)
    assert text.count(PLACEHOLDER) == 2
    ours = processor.apply_chat_template(
        conversation(audio_dir), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    expected = converted_processor.apply_chat_template(
        conversation(audio_dir), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["input_features"], expected["input_features"])
    # The clip without speech gets the reference's " " (one token) between its placeholders and <end_audio>.
    ids = ours["input_ids"][0].tolist()
    decoded = processor.tokenizer.decode(ids)
    assert decoded.count("<start_audio>" + PLACEHOLDER * PROMPT_SIZE + "a tone<end_audio>") == 1
    assert decoded.count("<start_audio>" + PLACEHOLDER * PROMPT_SIZE + " <end_audio>") == 1
    last_placeholder = len(ids) - 1 - ids[::-1].index(processor.audio_token_id)
    assert (
        ids[last_placeholder + 1 : last_placeholder + 2] == processor.tokenizer(" ", add_special_tokens=False).input_ids
    )


def test_release_pipeline_answers_like_the_converted_checkpoint(release_dir, converted, audio_dir):
    folder, _, _ = converted
    kwargs = {"max_new_tokens": 6}
    answer = pipeline("audio-text-to-text", model=str(release_dir))(conversation(audio_dir), **kwargs)
    expected = pipeline("audio-text-to-text", model=str(folder), trust_remote_code=True)(
        conversation(audio_dir), **kwargs
    )
    assert answer == expected
    assert answer["transcripts"] == ["a tone", ""]


@pytest.mark.slow
def test_cli_chat_and_eval_on_the_release(release_dir, converted, audio_dir, tmp_path, capsys):
    folder, _, _ = converted
    chat = ["chat", str(audio_dir / "tone.wav"), "-p", "What is it?", "--transcript", "a tone"]
    chat += ["--max-new-tokens", "5", "--dtype", "float32"]
    assert cli_main([*chat, "--model", str(release_dir)]) == 0
    from_release = capsys.readouterr().out
    assert cli_main([*chat, "--model", str(folder)]) == 0
    assert from_release == capsys.readouterr().out and from_release.strip()

    records = [
        {"id": f"q{i}", "audio_id": "tone.wav", "question": "Is it a tone?", "choices": ["yes", "no"], "answer": "yes"}
        for i in range(2)
    ]
    data_file = tmp_path / "bench.json"
    data_file.write_text(json.dumps(records))
    runs = {}
    for name, model in (("release", release_dir), ("converted", folder)):
        command = ["eval", "--model", str(model), "--data-file", str(data_file), "--audio-root", str(audio_dir)]
        command += ["--output-dir", str(tmp_path / name), "--no-asr", "--max-new-tokens", "3", "--dtype", "float32"]
        assert cli_main(command) == 0
        runs[name] = [json.loads(line)["prediction"] for line in (tmp_path / name / "predictions.jsonl").open()]
    assert runs["release"] == runs["converted"] and len(runs["release"]) == 2


# ---------------------------------------------------------------------------------------------- unreachable LLM
@pytest.fixture()
def gated_release_dir(tmp_path, whisper_dir, release_dir) -> Path:
    folder = tmp_path / "gated_release"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(release_dir / "model.safetensors")
    config = json.loads((release_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "llm_model_id": GATED_LLM}))
    return folder


@pytest.fixture()
def gated_hub(monkeypatch):
    """The Hub boundary answering as for a gated repo whose licence was not accepted (HTTP 403)."""
    import httpx

    def refuse(repo_id, filename, **kwargs):
        request = httpx.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/{filename}")
        raise GatedRepoError(
            f"403 Client Error. Cannot access gated repo for url {request.url}. Access to model {repo_id} is "
            "restricted and you are not in the authorized list.",
            response=httpx.Response(403, request=request),
        )

    monkeypatch.setattr(transformers_hub, "hf_hub_download", refuse)


EXPECTED_GATED = (
    f"cannot fetch '{GATED_LLM}', the LLM (llm_model_id) named by {{release}}: access is gated: accept its licence "
    f"at https://huggingface.co/{GATED_LLM}, then log in with `hf auth login` (or token=...)."
)


def test_release_load_takes_neutral_keywords_and_refuses_only_what_it_cannot_honour(release_dir, monkeypatch):
    """transformers 5.25's Auto classes pass `subfolder=""`; neutral values (None, "", {}, transformers' own
    defaults, read from the installed `from_pretrained`) load, a value that would change the result is named."""
    from modeling_desta import loading_desta

    seen = []
    check = loading_desta._check_release_kwargs
    monkeypatch.setattr(
        loading_desta, "_check_release_kwargs", lambda kwargs: seen.append(dict(kwargs)) or check(kwargs)
    )
    AutoModel.from_pretrained(release_dir)
    pipeline("audio-text-to-text", model=str(release_dir))
    assert len(seen) == 2  # what the installed transformers really passes, accepted
    neutral = loading_desta.neutral_from_pretrained_values()
    assert neutral["subfolder"] == "" and neutral["output_loading_info"] is False
    DestaForConditionalGeneration.from_pretrained(
        release_dir, subfolder="", output_loading_info=False, device_map=None, key_mapping={}, variant=None
    )
    with pytest.raises(TypeError, match=r"does not support device_map='sequential', output_loading_info=True; convert"):
        AutoModel.from_pretrained(release_dir, device_map="sequential", output_loading_info=True)


@pytest.mark.parametrize(
    "load", [AutoModel.from_pretrained, AutoProcessor.from_pretrained], ids=["AutoModel", "AutoProcessor"]
)
def test_gated_llm_is_one_clear_error(load, gated_release_dir, gated_hub):
    with pytest.raises(OSError) as raised:
        load(gated_release_dir)
    assert str(raised.value) == EXPECTED_GATED.format(release=gated_release_dir)


def test_cli_gated_llm_is_one_line_without_traceback(gated_release_dir, gated_hub, audio_dir, capsys):
    assert cli_main(["chat", str(audio_dir / "tone.wav"), "--model", str(gated_release_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"desta-audio: error: {EXPECTED_GATED.format(release=gated_release_dir)}\n"
    assert captured.out == ""


def test_missing_component_names_the_repo(tmp_path, release_dir):
    folder = tmp_path / "moved"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(release_dir / "model.safetensors")
    config = json.loads((release_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "encoder_model_id": str(tmp_path / "no-whisper")}))
    with pytest.raises(OSError, match=r"cannot fetch '.*no-whisper', the Whisper \(encoder_model_id\)"):
        DestaForConditionalGeneration.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------- from_components
def test_from_components_without_processor_agrees_with_the_processor(llm_dir, whisper_dir, audio_dir):
    """Before: audio_token_id stayed None and processor output failed with
    `AttributeError: 'bool' object has no attribute 'sum'` in get_placeholder_mask."""
    processor = DestaProcessor.from_components(llm_dir, whisper_dir, num_audio_queries=4)
    model = DestaForConditionalGeneration.from_components(
        llm_dir, whisper_dir, num_audio_queries=4, qformer_num_hidden_layers=1
    ).eval()
    assert model.config.audio_token_id == processor.audio_token_id is not None
    inputs = processor.apply_chat_template(
        conversation(audio_dir), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_from_components_rule_adds_the_default_token_like_the_processor(tmp_path, real_whisper_dir, whisper_dir):
    """A tokenizer without Llama 3's reserved token: both sides add `<|AUDIO|>` and agree on its id."""
    tokenizer = AutoTokenizer.from_pretrained(real_whisper_dir)
    assert LLAMA3_AUDIO_TOKEN not in tokenizer.get_vocab()
    llm_dir = tmp_path / "gpt2ish-llm"
    tiny_assets.build_llm(tokenizer, hidden_size=32, num_layers=1, save_dir=llm_dir)
    processor = DestaProcessor.from_components(llm_dir, whisper_dir, num_audio_queries=4)
    model = DestaForConditionalGeneration.from_components(llm_dir, whisper_dir, qformer_num_hidden_layers=1)
    assert processor.audio_token == DEFAULT_AUDIO_TOKEN
    assert model.config.audio_token_id == processor.audio_token_id == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)


def test_audio_token_rule():
    assert pick_audio_token({LLAMA3_AUDIO_TOKEN: 5, DEFAULT_AUDIO_TOKEN: 6}) == LLAMA3_AUDIO_TOKEN
    assert pick_audio_token({"a": 0}) == DEFAULT_AUDIO_TOKEN


@pytest.mark.parametrize(
    "override, named",
    [
        ({"audio_token_id": 3}, "audio_token_id=3 (processor: 6)"),
        ({"vocab_size": 9999}, "vocab_size=9999"),
        ({"num_audio_queries": 16}, "num_audio_queries=16 (processor: 4)"),
    ],
    ids=["audio_token_id", "vocab_size", "num_audio_queries"],
)
def test_processor_and_contradicting_override_is_an_error(override, named, llm_dir, whisper_dir):
    processor = DestaProcessor.from_components(llm_dir, whisper_dir, num_audio_queries=4)
    assert processor.audio_token_id == 6
    with pytest.raises(ValueError, match="from_components got " + re.escape(named)):
        DestaForConditionalGeneration.from_components(llm_dir, whisper_dir, processor=processor, **override)


# ---------------------------------------------------------------------------------------------- memory
def test_assembly_takes_the_loaded_weights_without_copying(llm_dir, whisper_dir):
    """The skeleton is built on the meta device and the loaded modules become the model's: every LLM and Whisper
    tensor of the result is the very storage that was loaded, and nothing is left on the meta device."""
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    whisper = tiny_assets.build_whisper()
    loaded = {tensor.data_ptr() for module in (llm, whisper) for tensor in module.state_dict().values()}
    model = DestaForConditionalGeneration.from_components(llm, whisper, qformer_num_hidden_layers=1)
    ours = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("model.connector.")}
    assert {tensor.data_ptr() for tensor in ours.values()} <= loaded
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    assert model.model.connector.layer_weights.abs().sum() == 0  # the connector's own initialisation ran
    assert model.model.connector.layer_prompts[0].std() > 0.5


def test_release_connector_is_the_loaded_tensors(release_dir):
    model = DestaForConditionalGeneration.from_pretrained(release_dir)
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    assert model.config.text_config is model.model.language_model.config  # one config object, not a copy


def test_connector_keys_are_checked_before_the_llm_weights_are_fetched(tmp_path, release_dir, llm_dir):
    """A bad release fails on its keys at once, not after gigabytes of LLM weights (here: weights absent)."""
    weightless_llm = tmp_path / "llm-without-weights"
    shutil.copytree(llm_dir, weightless_llm, ignore=shutil.ignore_patterns("*.safetensors"))
    folder = tmp_path / "bad-release"
    folder.mkdir()
    state = load_file(release_dir / "model.safetensors")
    state.pop("perception.connector.layer_weights")
    save_file(state, folder / "model.safetensors")
    config = json.loads((release_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "llm_model_id": str(weightless_llm)}))
    with pytest.raises(ValueError, match=re.escape("missing from checkpoint: model.connector.layer_weights")):
        DestaForConditionalGeneration.from_pretrained(folder)
