"""The processor side of transformers 5.24's contract (point 8 of the issue that asked for it): kwargs routed
through `ProcessingKwargs`, padding/truncation/max_length honoured on the expanded ids, `chat_template=` passed
through, message objects accepted, and `apply_chat_template` with `ProcessorMixin`'s signature and defaults."""

import inspect
from dataclasses import dataclass

import numpy as np
import pydantic
import pytest
import torch
from huggingface_hub import ChatCompletionInputMessage
from transformers import BatchFeature, ProcessorMixin

STANDARD_CALL = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}


def _chat(audio_dir, text="What do you hear?"):
    return [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(audio_dir / "tone.wav"), "transcript": "a"},
                {"type": "text", "text": text},
            ],
        }
    ]


def test_apply_chat_template_has_the_mixins_signature_and_defaults(tiny_parts):
    _, processor = tiny_parts
    ours = inspect.signature(type(processor).apply_chat_template).parameters
    mixin = inspect.signature(ProcessorMixin.apply_chat_template).parameters
    assert [(name, p.kind, p.default) for name, p in ours.items()] == [
        (name, p.kind, p.default) for name, p in mixin.items()
    ]


def test_voxtral_style_calls_run_unchanged(tiny_parts, audio_dir):
    _, processor = tiny_parts
    chat = _chat(audio_dir)
    rendered = processor.apply_chat_template(chat)  # mixin defaults: a string, no generation prompt
    expected = processor.tokenizer.apply_chat_template(
        [
            {"role": "system", "content": processor.default_system_prompt},  # the processor's default
            {"role": "user", "content": f"{processor.audio_token}\n\nWhat do you hear?"},
        ],
        tokenize=False,
    )
    assert rendered == expected
    encoded = processor.apply_chat_template(chat, **STANDARD_CALL)
    assert isinstance(encoded, BatchFeature)
    assert set(encoded) == {"input_ids", "attention_mask", "input_features"}
    ids_only = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    assert torch.equal(ids_only, encoded["input_ids"])
    as_numpy = processor.apply_chat_template(chat, **STANDARD_CALL, return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray)
    assert as_numpy["input_ids"].tolist() == encoded["input_ids"].tolist()


def test_padding_to_max_length_is_honoured(tiny_parts, audio_dir):
    _, processor = tiny_parts
    plain = processor.apply_chat_template(_chat(audio_dir), **STANDARD_CALL)
    width = plain["input_ids"].shape[1]
    padded = processor.apply_chat_template(
        _chat(audio_dir), **STANDARD_CALL, processor_kwargs={"padding": "max_length", "max_length": width + 7}
    )
    assert padded["input_ids"].shape == (1, width + 7)
    assert torch.equal(padded["input_ids"][:, 7:], plain["input_ids"])  # left padding by default
    assert padded["attention_mask"][0].tolist() == [0] * 7 + [1] * width
    right = processor(
        text=["hello", "hello there"], padding="max_length", max_length=9, text_kwargs={"padding_side": "right"}
    )
    assert right["input_ids"].shape == (2, 9) and right["attention_mask"][:, 0].tolist() == [1, 1]


def test_truncation_to_max_length_is_honoured_but_never_cuts_audio(tiny_parts, audio_dir):
    _, processor = tiny_parts
    text = "one two three four five six seven eight nine ten"
    truncated = processor(text=text, truncation=True, max_length=5)
    assert truncated["input_ids"][0].tolist() == processor.tokenizer(text).input_ids[:5]
    with pytest.raises(ValueError, match=r"would cut into its audio placeholders \(8 of them\)"):
        processor.apply_chat_template(
            _chat(audio_dir), **STANDARD_CALL, processor_kwargs={"truncation": True, "max_length": 10}
        )


def test_kwargs_route_through_processing_kwargs(tiny_parts):
    _, processor = tiny_parts
    flat = processor(text=["a b c", "a"], padding_side="right", return_tensors="np")
    nested = processor(
        text=["a b c", "a"], text_kwargs={"padding_side": "right"}, common_kwargs={"return_tensors": "np"}
    )
    assert flat["input_ids"].tolist() == nested["input_ids"].tolist()
    assert flat["attention_mask"][1].tolist()[0] == 1  # right padding
    with pytest.raises(ValueError, match="padding was passed two times"):
        processor(text="a", padding=True, text_kwargs={"padding": False})
    with pytest.raises(ValueError, match=r"does not support the text kwargs \['return_offsets_mapping'\]"):
        processor(text="a", return_offsets_mapping=True)


def test_audio_kwargs_sampling_rate_applies_to_bare_arrays(tiny_parts):
    _, processor = tiny_parts
    rate = 8000
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    text = f"{processor.audio_token} hi"
    as_kwarg = processor(text=text, audio=[tone], audio_kwargs={"sampling_rate": rate})
    as_dict = processor(text=text, audio=[{"array": tone, "sampling_rate": rate}])
    assert torch.equal(as_kwarg["input_features"], as_dict["input_features"])


def test_chat_template_argument_is_used(tiny_parts, audio_dir):
    _, processor = tiny_parts
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    rendered = processor.apply_chat_template(_chat(audio_dir), chat_template=template)
    system = f"[system] {processor.default_system_prompt}\n"
    assert rendered == f"{system}[user] {processor.audio_token}\n\nWhat do you hear?\n"
    encoded = processor.apply_chat_template(_chat(audio_dir), chat_template=template, **STANDARD_CALL)
    assert int((encoded["input_ids"] == processor.audio_token_id).sum()) == processor.num_audio_queries


@dataclass
class DataclassMessage:
    role: str
    content: list


class PydanticMessage(pydantic.BaseModel):
    role: str
    content: list


@pytest.mark.parametrize("message_class", [DataclassMessage, PydanticMessage, ChatCompletionInputMessage])
def test_message_objects_are_accepted(tiny_parts, audio_dir, message_class):
    _, processor = tiny_parts
    chat = _chat(audio_dir)
    objects = [message_class(role=message["role"], content=message["content"]) for message in chat]
    expected = processor.apply_chat_template(chat, **STANDARD_CALL)
    ours = processor.apply_chat_template(objects, **STANDARD_CALL)
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["input_features"], expected["input_features"])
    batch = processor.apply_chat_template([objects, chat], **STANDARD_CALL)
    assert batch["input_ids"].shape[0] == 2 and torch.equal(batch["input_ids"][0], batch["input_ids"][1])
