"""Save -> load round trips, in-process and through remote code in a process that cannot import the project."""

import json

import pytest
import torch
from isolation import run_isolated

from modeling_desta import DestaForConditionalGeneration

# Part of the short suite run on the oldest supported transformers too (`pytest -m compat`).
# Slow (real Whisper, subprocesses, servers or a browser): left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.compat, pytest.mark.slow]


def _inputs(processor, audio_dir):
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(audio_dir / "hello.wav"), "transcript": "hello"},
                {"type": "text", "text": "What?"},
            ],
        }
    ]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_save_load_gives_identical_logits(saved_model_dir, tiny_parts, audio_dir):
    model, processor = tiny_parts
    loaded = DestaForConditionalGeneration.from_pretrained(saved_model_dir).eval()
    inputs = _inputs(processor, audio_dir)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_folder_is_self_contained(saved_model_dir):
    config = json.loads((saved_model_dir / "config.json").read_text())
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMultimodalLM"):
        assert auto_class in config["auto_map"], auto_class
    processor_config = json.loads((saved_model_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_desta.DestaProcessor"
    for name in ("configuration_desta.py", "modeling_desta.py", "processing_desta.py", "audio_io.py"):
        assert (saved_model_dir / name).exists(), name


def test_remote_code_loads_in_clean_process(saved_model_dir, tiny_parts, audio_dir, tmp_path):
    model, processor = tiny_parts
    inputs = _inputs(processor, audio_dir)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor
        folder = {str(saved_model_dir)!r}
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        conversation = [{{"role": "user", "content": [{{"type": "audio", "path": {str(audio_dir / "hello.wav")!r}, "transcript": "hello"}}, {{"type": "text", "text": "What?"}}]}}]
        inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
        expected = torch.load("expected.pt")
        for auto_class in (AutoModel, AutoModelForCausalLM):
            model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                logits = model(**inputs).logits
            assert torch.equal(logits, expected), (logits - expected).abs().max()
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
        print("REMOTE_OK", type(processor).__name__)
    """
    result = run_isolated(script, cwd=tmp_path)
    assert "REMOTE_OK DestaProcessor" in result.stdout
