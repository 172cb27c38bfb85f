"""Behaviour of the DeSTA model: taps, connector, equivalences with the base LLM, batching, generation."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration

from modeling_desta import DestaConfig, DestaForConditionalGeneration
from modeling_desta.configuration_desta import default_audio_layer_ids

# Part of the short suite run on the oldest supported transformers too (`pytest -m compat`).
pytestmark = pytest.mark.compat


def random_features(num_windows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_windows, 80, 3000, generator=generator)


def test_default_taps_follow_reference_rule():
    assert default_audio_layer_ids(32) == [7, 15, 23, 31]
    assert default_audio_layer_ids(24) == [5, 11, 17, 23]
    assert default_audio_layer_ids(12) == [2, 5, 8, 11]
    assert default_audio_layer_ids(4) == [0, 1, 2, 3]
    config = DestaConfig()
    assert config.audio_layer_ids == [7, 15, 23, 31]
    assert config.num_audio_queries == 64 and config.qformer_num_attention_heads == 20


@pytest.mark.parametrize("bad_ids", [[0, 9], [2, 1], []])
def test_invalid_taps_are_rejected(bad_ids, whisper_dir):
    whisper_config = WhisperForConditionalGeneration.config_class.from_pretrained(whisper_dir)
    with pytest.raises(ValueError, match="audio_layer_ids"):
        DestaConfig(audio_config=whisper_config.to_dict(), audio_layer_ids=bad_ids)


def test_taps_are_pre_final_layer_norm_outputs(tiny_parts):
    model, _ = tiny_parts
    encoder = model.model.audio_tower.get_encoder()
    features = random_features(2)
    with torch.no_grad():
        taps, last = model.model.encode_audio(features, output_last_hidden_state=True)
        hidden = torch.nn.functional.gelu(encoder.conv1(features))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight
        by_hand = []
        for layer in encoder.layers:
            hidden = layer(hidden, None)
            by_hand.append(hidden)
        reference_last = encoder(features).last_hidden_state
    assert len(taps) == len(model.config.audio_layer_ids)
    for tap, layer_id in zip(taps, model.config.audio_layer_ids):
        torch.testing.assert_close(tap, by_hand[layer_id], rtol=0, atol=1e-6)
    # The final tap is the last layer's output *before* the final norm, unlike output_hidden_states[-1].
    assert not torch.allclose(taps[-1], reference_last, atol=1e-3)
    torch.testing.assert_close(last, reference_last, rtol=0, atol=1e-5)


def test_connector_skips_layers_past_the_deepest_tap(tiny_parts):
    model = copy.deepcopy(tiny_parts[0])
    model.config.audio_layer_ids = [0, 1]
    calls = []
    for index, layer in enumerate(model.model.audio_tower.get_encoder().layers):
        layer.register_forward_hook(lambda *_, index=index: calls.append(index))
    with torch.no_grad():
        model.model.encode_audio(random_features(1))
    assert calls == [0, 1]
    calls.clear()
    with torch.no_grad():
        model.model.encode_audio(random_features(1), output_last_hidden_state=True)
    assert calls == [0, 1, 2, 3]


def _taps(num_taps: int, hidden: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 20, hidden, generator=generator) for _ in range(num_taps)]


def test_query_self_attention_is_not_causal(tiny_parts):
    connector = tiny_parts[0].model.connector
    hidden = tiny_parts[0].config.audio_config.d_model
    queries = torch.randn(1, 8, hidden)
    audio_states = torch.randn(1, 20, hidden)
    changed = queries.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        before = connector.qformer(queries, audio_states)
        after = connector.qformer(changed, audio_states)
    # Changing the LAST query moves the FIRST query's output: attention looks forward too.
    assert (before[:, 0] - after[:, 0]).abs().max() > 1e-4


def test_mixing_weights_are_per_query(tiny_parts):
    connector = copy.deepcopy(tiny_parts[0].model.connector)
    num_taps = len(connector.layer_prompts)
    taps = _taps(num_taps, connector.layer_prompts[0].shape[-1])
    with torch.no_grad():
        batch = taps[0].shape[0]
        per_tap = [
            connector.qformer(prompt.expand(batch, -1, -1), tap) for prompt, tap in zip(connector.layer_prompts, taps)
        ]
        # Query q takes tap (q mod num_taps) only.
        weights = torch.full_like(connector.layer_weights, -1e4)
        for query in range(weights.shape[0]):
            weights[query, query % num_taps] = 0.0
        connector.layer_weights.copy_(weights)
        mixed = connector(taps)
        expected = torch.stack([per_tap[q % num_taps][:, q] for q in range(weights.shape[0])], dim=1)
    torch.testing.assert_close(mixed, connector.proj(expected), rtol=0, atol=1e-5)
    assert connector.mixing_weights().shape == (weights.shape[0], num_taps)


def test_text_only_logits_equal_base_llm(tiny_parts, llm_dir):
    model, processor = tiny_parts
    base = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Hello world, what is this?"}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected_ids = processor.tokenizer.apply_chat_template(
        [
            {"role": "system", "content": processor.default_system_prompt},  # the processor's default, as for any chat
            {"role": "user", "content": "Hello world, what is this?"},
        ],
        add_generation_prompt=True,
        tokenize=True,
    )
    expected_ids = expected_ids["input_ids"] if hasattr(expected_ids, "keys") else expected_ids
    assert inputs["input_ids"][0].tolist() == list(expected_ids)
    assert inputs["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) == 1
    with torch.no_grad():
        ours = model(**inputs).logits
        theirs = base(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert torch.equal(ours, theirs)
    with torch.no_grad():
        ours_generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        theirs_generated = base.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours_generated, theirs_generated)


def _conversation(audio, question, transcript=None):
    return [
        {"role": "system", "content": [{"type": "text", "text": "Focus on the audio clips and instructions."}]},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(audio), "transcript": transcript},
                {"type": "text", "text": question},
            ],
        },
    ]


@pytest.mark.slow
def test_batched_equals_one_by_one(tiny_parts, audio_dir):
    model, processor = tiny_parts
    conversations = [
        _conversation(audio_dir / "hello.wav", "What is said?", "hello world"),
        _conversation(audio_dir / "long_45s.wav", "Describe the sound in a few words, please, with detail."),
        _conversation(audio_dir / "tone.wav", "Tone?", "a"),
    ]
    batch = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert batch["input_features"].shape[0] == 4  # the 45 s clip spans two windows
    with torch.no_grad():
        batched_logits = model(**batch).logits
        batched_generation = model.generate(**batch, max_new_tokens=5, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, conversation in enumerate(conversations):
        single = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        length = single["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, width - length :], single["input_ids"][0])
        with torch.no_grad():
            single_logits = model(**single).logits
            single_generation = model.generate(**single, max_new_tokens=5, do_sample=False)
        torch.testing.assert_close(batched_logits[row, width - length :], single_logits[0], rtol=0, atol=1e-5)
        assert torch.equal(batched_generation[row, width:], single_generation[0, length:])


class EncoderCounter:
    def __init__(self, model):
        self.count = 0
        model.model.audio_tower.get_encoder().conv1.register_forward_hook(self)

    def __call__(self, *_):
        self.count += 1


@pytest.mark.parametrize("sampling", [False, True])
def test_generate_runs_audio_encoder_once(sampling, tiny_parts, audio_dir):
    model = copy.deepcopy(tiny_parts[0])
    processor = tiny_parts[1]
    counter = EncoderCounter(model)
    inputs = processor.apply_chat_template(
        [_conversation(audio_dir / "hello.wav", "What?"), _conversation(audio_dir / "tone.wav", "Which?")],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=sampling, top_k=50)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 8
    assert counter.count == 1  # one batched encoder pass for both clips, none per decoded token


def test_placeholder_count_mismatch_raises(tiny_parts, audio_dir):
    model, processor = tiny_parts
    inputs = processor.apply_chat_template(
        _conversation(audio_dir / "hello.wav", "What?"), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with pytest.raises(ValueError, match=r"holds 8 audio placeholder tokens .* gives 16 vectors"):
        model(input_ids=inputs["input_ids"], input_features=random_features(2))
    # Audio given, no placeholders: the count check still applies (placeholders without audio are plain text,
    # see tests/test_model_contract.py).
    text_only = inputs["input_ids"][inputs["input_ids"] != processor.audio_token_id][None]
    with pytest.raises(ValueError, match=r"holds 0 audio placeholder tokens .* gives 8 vectors"):
        model(input_ids=text_only, input_features=random_features(1))


def test_from_components_copies_whisper_and_llm_weights(tiny_parts, llm_dir, whisper_dir):
    model, processor = tiny_parts
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir)
    ours_whisper = model.model.audio_tower.state_dict()
    for name, tensor in whisper.state_dict().items():
        assert torch.equal(ours_whisper[name], tensor), name
    ours_llm = model.model.language_model.state_dict()
    for name, tensor in llm.model.state_dict().items():
        assert torch.equal(ours_llm[name], tensor), name
    assert torch.equal(model.lm_head.weight, llm.lm_head.weight)
    # The tiny tokenizer already has the reference placeholder token, so no embedding was added.
    assert processor.audio_token == "<|reserved_special_token_87|>"
    assert model.get_input_embeddings().weight.shape[0] == llm.config.vocab_size
    assert model.config.audio_token_id == processor.audio_token_id


def test_from_components_adds_audio_token_and_resizes_only_then(tmp_path, llm_dir, whisper_dir):
    from processing import DestaProcessor

    processor = DestaProcessor.from_components(llm_dir, whisper_dir, audio_token="<|AUDIO|>", num_audio_queries=4)
    assert processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>") == len(processor.tokenizer) - 1
    model = DestaForConditionalGeneration.from_components(
        llm_dir,
        whisper_dir,
        processor=processor,
        qformer_num_hidden_layers=1,
    )
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    old_vocab = llm.config.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == old_vocab + 1
    assert model.config.text_config.vocab_size == old_vocab + 1
    assert torch.equal(model.get_input_embeddings().weight[:old_vocab], llm.get_input_embeddings().weight)


def test_connector_parameter_count_matches_release_shape():
    """The release's connector (6 layers, 1280 hidden, 4096 LLM) has about 131.5 M parameters."""
    config = DestaConfig()
    with torch.device("meta"):
        from modeling_desta import DestaConnector

        connector = DestaConnector(config)
    count = sum(p.numel() for p in connector.parameters())
    assert 131e6 < count < 132e6, count


def test_any_causal_lm_backbone(tmp_path, tokenizer_dir, whisper_dir, audio_dir):
    """A Qwen2 backbone works like Llama: text-only logits equal the base LM's, audio is spliced in."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from processing import DestaProcessor

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    ).eval()
    qwen.save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    processor = DestaProcessor.from_components(tmp_path / "qwen", whisper_dir, num_audio_queries=4)
    model = DestaForConditionalGeneration.from_components(
        tmp_path / "qwen", whisper_dir, processor=processor, qformer_num_hidden_layers=1
    ).eval()
    assert "Qwen2DecoderLayer" in model._no_split_modules
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as in the source
    # Loaded for a Qwen2 config, the tokenizer gains Qwen's default `<|endoftext|>`, so embeddings grow by one.
    assert len(processor.tokenizer) == len(tokenizer) + 1 == model.config.text_config.vocab_size
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    with torch.no_grad():
        assert torch.equal(model(**text).logits[..., : len(tokenizer)], qwen(**text).logits)
        with_audio = processor.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [{"type": "audio", "path": str(audio_dir / "tone.wav")}, {"type": "text", "text": "Hi"}],
                }
            ],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )
        assert (
            model.generate(**with_audio, max_new_tokens=3, do_sample=False).shape[1]
            == with_audio["input_ids"].shape[1] + 3
        )
