"""Quantized loading through the standard API: bitsandbytes 4-bit (nf4, fp4) and 8-bit, torchao int8 weight-only.

The LLM's and Whisper's linear layers are quantized, the connector never is and stays float32 (the model's
`_keep_in_fp32_modules`), through `from_pretrained`, `AutoModel` with remote code, `pipeline(model_kwargs=...)`,
`desta-audio chat/eval --quantize`, and the release format (quantized while its LLM loads). Contract tests run on
the tiny random model; answers are compared on the real small one (SmolLM2-135M-Instruct + Whisper tiny.en).
"""

from __future__ import annotations

import json

import pytest
import soundfile
import torch
from test_hub import reference_state_dict, write_reference_checkpoint
from transformers import AutoModel, BitsAndBytesConfig, TorchAoConfig, pipeline

from desta_audio import runtime
from desta_audio import testing as tiny_assets
from desta_audio.cli import main as cli_main
from modeling_desta import DestaForConditionalGeneration

bnb = pytest.importorskip("bitsandbytes", reason="the [quantization] extra (bitsandbytes) is not installed")
torchao_quantization = pytest.importorskip("torchao.quantization", reason="the [quantization] extra (torchao)")


def quantization_configs() -> dict:
    return {
        "4bit-nf4": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
        "4bit-fp4": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32
        ),
        "8bit": BitsAndBytesConfig(load_in_8bit=True),
        "int8": TorchAoConfig(torchao_quantization.Int8WeightOnlyConfig()),
    }


def is_quantized(linear: torch.nn.Linear) -> bool:
    """A bitsandbytes layer, or a Linear whose weight torchao replaced by a quantized tensor subclass."""
    return type(linear) is not torch.nn.Linear or type(linear.weight.data) is not torch.Tensor


def linears(model, prefix: str) -> list[torch.nn.Linear]:
    found = [m for name, m in model.named_modules() if name.startswith(prefix) and isinstance(m, torch.nn.Linear)]
    assert found, prefix
    return found


def assert_connector_float32_and_rest_quantized(model, whisper_quantized: bool = True) -> None:
    connector = model.model.connector
    assert all(type(layer) is torch.nn.Linear for layer in linears(model, "model.connector"))
    assert {type(p.data) for p in connector.parameters()} == {torch.Tensor}
    assert {p.dtype for p in connector.parameters()} == {torch.float32}
    assert all(is_quantized(layer) for layer in linears(model, "model.language_model"))
    encoder_layers = linears(model, "model.audio_tower.model.encoder.layers")
    assert all(is_quantized(layer) == whisper_quantized for layer in encoder_layers)


def text_inputs(processor, question: str = "What is the capital of France?"):
    conversation = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    return processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


# Part of the short suite run on the oldest supported transformers, bitsandbytes and torchao too (`pytest -m compat`).
@pytest.mark.compat
@pytest.mark.parametrize("name", list(quantization_configs()))
def test_quantized_load_keeps_the_connector_float32(name, saved_model_dir):
    """AutoModel with remote code quantizes the LLM and Whisper, never the connector, and the model answers."""
    config = quantization_configs()[name]
    model = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True, quantization_config=config)
    assert_connector_float32_and_rest_quantized(model)
    reference = DestaForConditionalGeneration.from_pretrained(saved_model_dir)
    for (key, ours), theirs in zip(
        model.model.connector.state_dict().items(), reference.model.connector.state_dict().values()
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=key)
    ids = torch.tensor([[1, 5, 7, 9]])
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_whisper_stays_full_precision_when_skipped(saved_model_dir):
    """transformers' skip list keeps Whisper whole; the connector is skipped whatever the list says."""
    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["model.audio_tower", "lm_head"])
    model = DestaForConditionalGeneration.from_pretrained(saved_model_dir, quantization_config=config)
    assert_connector_float32_and_rest_quantized(model, whisper_quantized=False)


def test_a_request_to_quantize_the_connector_is_an_error(saved_model_dir):
    per_module = torchao_quantization.FqnToConfig(
        {"model.connector.proj.1": torchao_quantization.Int8WeightOnlyConfig()}
    )
    with pytest.raises(ValueError, match=r"names the connector \(model.connector.proj.1\).*Remove those entries"):
        DestaForConditionalGeneration.from_pretrained(saved_model_dir, quantization_config=TorchAoConfig(per_module))


def test_pipeline_model_kwargs_quantize(saved_model_dir):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    pipe = pipeline(
        "audio-text-to-text",
        model=str(saved_model_dir),
        trust_remote_code=True,
        model_kwargs={"quantization_config": config},
    )
    assert_connector_float32_and_rest_quantized(pipe.model)
    clip = {"array": tiny_assets.sine(1.0), "sampling_rate": 16000, "transcript": "hello"}
    conversation = [{"role": "user", "content": [{"type": "audio", **clip}, {"type": "text", "text": "Hi?"}]}]
    assert isinstance(pipe(conversation, max_new_tokens=3)["generated_text"], str)


@pytest.fixture()
def tone_wav(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, tiny_assets.sine(1.0), 16000)
    return path


@pytest.mark.parametrize("quantize", ["4bit", "8bit", "int8"])
def test_cli_chat_quantize(quantize, saved_model_dir, tone_wav, capsys, monkeypatch):
    loaded = []
    load = runtime.pipeline
    monkeypatch.setattr(runtime, "pipeline", lambda *a, **k: loaded.append(p := load(*a, **k)) or p)
    args = ["chat", str(tone_wav), "--model", str(saved_model_dir), "--transcript", "", "--device", "cpu"]
    code = cli_main([*args, "--quantize", quantize, "--max-new-tokens", "2"])
    assert code == 0, capsys.readouterr().err
    assert_connector_float32_and_rest_quantized(loaded[0].model)


def test_cli_eval_quantize(saved_model_dir, tone_wav, tmp_path, capsys):
    data = tmp_path / "data.json"
    item = {"id": "a", "audio": str(tone_wav), "question": "Which?", "choices": ["x", "y"], "answer": "x"}
    data.write_text(json.dumps([{**item, "transcript": ""}]))
    args = ["eval", "--model", str(saved_model_dir), "--data-file", str(data), "--output-dir", str(tmp_path / "out")]
    code = cli_main([*args, "--device", "cpu", "--quantize", "8bit", "--max-new-tokens", "2", "--no-asr"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "results.json").exists()


def test_cli_quantize_with_a_served_model_is_an_error(saved_model_dir, capsys):
    args = [
        "eval",
        "--model",
        "m",
        "--data-file",
        "d.json",
        "--base-url",
        "http://127.0.0.1:1/v1",
        "--quantize",
        "4bit",
    ]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "--quantize 4bit loads the model here" in err and "drop --quantize" in err


def test_quantization_on_a_device_its_library_does_not_support_names_the_fix(monkeypatch):
    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"}, raising=False)
    with pytest.raises(ValueError, match=r"does not run on cpu .*use --device cuda, or --quantize int8 \(torchao\)"):
        runtime.quantization_config("4bit", "cpu")


def test_quantization_without_its_library_names_the_extra(monkeypatch):
    real_import = runtime.importlib.import_module

    def missing(name, *args):
        if name == "torchao":
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args)

    monkeypatch.setattr(runtime.importlib, "import_module", missing)
    with pytest.raises(
        ValueError, match=r"needs torchao, which is not installed: pip install 'desta-audio\[quantization\]'"
    ):
        runtime.quantization_config("int8", "cpu")


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, llm_dir, whisper_dir):
    whisper_config = json.loads((whisper_dir / "config.json").read_text())
    llm_config = json.loads((llm_dir / "config.json").read_text())
    state = reference_state_dict(
        whisper_config["d_model"], llm_config["hidden_size"], whisper_config["encoder_attention_heads"], seed=1
    )
    return write_reference_checkpoint(tmp_path_factory.mktemp("release"), state, llm_dir, whisper_dir)


@pytest.mark.parametrize("name", ["4bit-nf4", "int8"])
def test_release_format_is_quantized_while_it_loads(name, release_dir):
    model = AutoModel.from_pretrained(release_dir, quantization_config=quantization_configs()[name])
    assert_connector_float32_and_rest_quantized(model)
    assert model.hf_quantizer is not None and model.config.quantization_config is not None
    full = AutoModel.from_pretrained(release_dir)
    torch.testing.assert_close(model.model.connector.state_dict(), full.model.connector.state_dict(), rtol=0, atol=0)


# ----------------------------------------------------------------------------- answers of the real small model
@pytest.fixture(scope="module")
def small_desta():
    from desta_audio.small.desta import cached_small_desta

    return cached_small_desta()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "same_tokens"), [("8bit", 8), ("int8", 8), ("4bit-nf4", 0)])
def test_quantized_small_model_answers_like_full_precision(name, same_tokens, small_desta):
    """The real small model's greedy answer: 8-bit and int8 give the same first tokens as float32; 4-bit (a 135M
    model loses most there) still names Paris."""
    from processing import DestaProcessor

    processor = DestaProcessor.from_pretrained(small_desta)
    inputs = text_inputs(processor)
    prompt = inputs["input_ids"].shape[1]
    full = DestaForConditionalGeneration.from_pretrained(small_desta).generate(**inputs, max_new_tokens=12)
    model = DestaForConditionalGeneration.from_pretrained(small_desta, quantization_config=quantization_configs()[name])
    quantized = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(quantized[0, prompt : prompt + same_tokens], full[0, prompt : prompt + same_tokens])
    assert "Paris" in processor.decode(quantized[0, prompt:])
