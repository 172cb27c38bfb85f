"""The model side of transformers 5.24's contract, one test (or group) per point of the issue that asked for it:
the `cache` argument, placeholder ids without audio, `return_dict`, `inputs_embeds`, `get_audio_features`, the
tensor-parallel plan, a settable vocabulary size, and the Q-Former's attention interface with compilation."""

import copy
import fnmatch
import warnings

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, CompileConfig, LogitsProcessor, LogitsProcessorList
from transformers.distributed.tensor_parallel import ColwiseParallel, EmbeddingParallel, RowwiseParallel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.integrations.tensor_parallel import ALL_PARALLEL_STYLES

from modeling_desta import DestaForConditionalGeneration
from modeling_desta.connector_desta import DestaQFormerAttention

STANDARD_CALL = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}


def _audio_inputs(processor, audio_dir, name="tone.wav", transcript="a"):
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(audio_dir / name), "transcript": transcript},
                {"type": "text", "text": "What do you hear?"},
            ],
        }
    ]
    return processor.apply_chat_template(conversation, **STANDARD_CALL)


def _text_ids_with_placeholders(processor) -> torch.Tensor:
    """A text-only prompt that happens to contain the placeholder id (as random ids in transformers' tests do)."""
    ids = processor.tokenizer("Tell me about the sound of rain", add_special_tokens=True).input_ids
    return torch.tensor([ids[:3] + [processor.audio_token_id] * 2 + ids[3:]])


def _greedy(model, **inputs):
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False)


# ---------------------------------------------------------------- 1. the KV cache is `cache`
def test_generate_continues_from_a_returned_cache_without_future_warnings(tiny_parts, audio_dir):
    model, processor = tiny_parts
    inputs = _audio_inputs(processor, audio_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning/DeprecationWarning from our forward in generate
        whole = _greedy(model, **inputs, max_new_tokens=8)
        first = _greedy(model, **inputs, max_new_tokens=4, return_dict_in_generate=True)
        # The audio is in the cache already: its features are not needed again (and are ignored if passed).
        continued = _greedy(
            model,
            input_ids=first.sequences,
            attention_mask=torch.ones_like(first.sequences),
            cache=first.cache,
            max_new_tokens=4,
        )
    assert torch.equal(continued, whole)


def test_past_key_values_is_a_deprecated_alias_of_cache(tiny_parts, audio_dir):
    model, processor = tiny_parts
    inputs = _audio_inputs(processor, audio_dir)
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        step = {"input_ids": torch.tensor([[5]]), "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + 1)}
        new_name = model(**step, cache=copy.deepcopy(prefill.cache)).logits
        with pytest.warns(FutureWarning, match="past_key_values"):
            old_name = model(**step, past_key_values=copy.deepcopy(prefill.cache)).logits
    assert torch.equal(new_name, old_name)


class ForceToken(LogitsProcessor):
    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token_id] = 0.0
        return forced


def test_generating_the_placeholder_id_completes(tiny_parts, audio_dir):
    """A decode step that emits the placeholder id feeds it back as text (the audio went in at prefill)."""
    model, processor = tiny_parts
    inputs = _audio_inputs(processor, audio_dir)
    force = LogitsProcessorList([ForceToken(processor.audio_token_id)])
    output = _greedy(model, **inputs, max_new_tokens=4, logits_processor=force)
    assert output[0, inputs["input_ids"].shape[1] :].tolist() == [processor.audio_token_id] * 4


# ---------------------------------------------------------------- 2. placeholder ids without audio are text
def test_placeholder_ids_without_audio_are_ordinary_tokens(tiny_parts, llm_dir):
    model, processor = tiny_parts
    base = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    ids = _text_ids_with_placeholders(processor)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_assisted_decoding_with_a_tiny_draft_equals_greedy(tiny_parts, llm_dir):
    model, processor = tiny_parts
    draft = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    ids = _text_ids_with_placeholders(processor)
    alone = _greedy(model, input_ids=ids, max_new_tokens=6)
    assisted = _greedy(model, input_ids=ids, max_new_tokens=6, assistant_model=draft)
    assert torch.equal(assisted, alone)


# ---------------------------------------------------------------- 3. return_dict
def test_return_dict_false_gives_tuples(tiny_parts, audio_dir):
    model, processor = tiny_parts
    inputs = _audio_inputs(processor, audio_dir)
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
        base_tuple = model.model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    torch.testing.assert_close(model.lm_head(base_tuple[0]), as_dict.logits, rtol=0, atol=0)
    configured = copy.deepcopy(model)
    configured.config.return_dict = False
    with torch.no_grad():
        from_config = configured(**inputs)
    assert isinstance(from_config, tuple) and torch.equal(from_config[0], as_dict.logits)


# ---------------------------------------------------------------- 4. inputs_embeds
def test_inputs_embeds_with_features_equal_input_ids_with_features(tiny_parts, audio_dir):
    model, processor = tiny_parts
    inputs = _audio_inputs(processor, audio_dir)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = model(**inputs).logits
        from_embeds = model(
            inputs_embeds=embeds, input_features=inputs["input_features"], attention_mask=inputs["attention_mask"]
        ).logits
    assert torch.equal(from_embeds, from_ids)


# ---------------------------------------------------------------- 5. get_audio_features
def test_get_audio_features_reports_the_whisper_pass_it_ran(tiny_parts, audio_dir):
    model = copy.deepcopy(tiny_parts[0])
    model.set_attn_implementation("eager")  # attention weights exist only with eager attention
    features = _audio_inputs(tiny_parts[1], audio_dir)["input_features"]
    encoder = model.model.audio_tower.get_encoder()
    with torch.no_grad():
        ours = model.get_audio_features(features, output_hidden_states=True, output_attentions=True)
        whisper = encoder(features, output_hidden_states=True, output_attentions=True)
        taps, _ = model.model.encode_audio(features)
        as_tuple = model.get_audio_features(features, return_dict=False)
    torch.testing.assert_close(ours.pooler_output, model.model.connector(taps).flatten(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(ours.last_hidden_state, whisper.last_hidden_state, rtol=0, atol=1e-6)
    assert len(ours.hidden_states) == len(whisper.hidden_states) == len(encoder.layers) + 1
    assert len(ours.attentions) == len(whisper.attentions) == len(encoder.layers)
    for mine, theirs in zip(ours.hidden_states + ours.attentions, whisper.hidden_states + whisper.attentions):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], ours.last_hidden_state)
    assert torch.equal(as_tuple[1], ours.pooler_output)


def test_get_audio_features_with_early_taps_reports_only_the_layers_that_ran(tiny_parts, audio_dir):
    model = copy.deepcopy(tiny_parts[0])
    model.config.audio_layer_ids = [0, 1]
    connector = model.model.connector
    connector.layer_prompts = connector.layer_prompts[:2]
    connector.layer_weights = torch.nn.Parameter(connector.layer_weights[:, :2])
    features = _audio_inputs(tiny_parts[1], audio_dir)["input_features"]
    with torch.no_grad():
        ours = model.get_audio_features(features, output_hidden_states=True)
        whisper = model.model.audio_tower.get_encoder()(features, output_hidden_states=True)
    assert len(ours.hidden_states) == 3  # embeddings + layers 0 and 1; layers 2 and 3 never ran
    for mine, theirs in zip(ours.hidden_states, whisper.hidden_states[:3]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert torch.equal(ours.last_hidden_state, ours.hidden_states[-1])


# ---------------------------------------------------------------- 6. tensor-parallel plan
def _weight_shard_dim(style) -> int:
    if isinstance(style, EmbeddingParallel):
        return style.shard_dim
    if isinstance(style, ColwiseParallel):
        return 0
    if isinstance(style, RowwiseParallel):
        return 1
    raise AssertionError(f"unexpected style {style!r}")


def test_tensor_parallel_plan_covers_the_tied_head_consistently(tiny_parts):
    model = tiny_parts[0]
    plan = model.tp_plan
    module_names = [name for name, _ in model.named_modules()]
    for pattern in plan:
        assert fnmatch.filter(module_names, pattern), f"TP rule {pattern!r} matches no module"
    for head, embedding in model._tied_weights_keys.items():
        head_module, embedding_module = head.rsplit(".", 1)[0], embedding.rsplit(".", 1)[0]
        assert head_module in plan and embedding_module in plan
        # One tensor when tied: both sides must be cut along the same (vocabulary) dimension.
        head_dim = _weight_shard_dim(ALL_PARALLEL_STYLES[plan[head_module]])
        assert head_dim == _weight_shard_dim(ALL_PARALLEL_STYLES[plan[embedding_module]]) == 0


# ---------------------------------------------------------------- 7. vocab_size and resizing
def test_vocab_size_is_settable_and_resizing_keeps_the_model_working(tiny_parts):
    model = copy.deepcopy(tiny_parts[0])
    old = model.config.vocab_size
    model.config.vocab_size = old + 1
    assert model.config.text_config.vocab_size == old + 1
    model.config.vocab_size = old
    model.resize_token_embeddings(old + 3)
    assert model.config.vocab_size == model.config.text_config.vocab_size == old + 3
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == old + 3
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, old + 2, 7]])).logits
    assert logits.shape == (1, 3, old + 3)


# ---------------------------------------------------------------- 9. attention interface and compilation
def _old_qformer_attention(module: DestaQFormerAttention, hidden_states, key_value_states):
    """The Q-Former attention as it was before the attention interface: a direct, unmasked SDPA call."""

    def split(states):
        return states.view(*states.shape[:2], module.num_heads, module.head_dim).transpose(1, 2)

    context = torch.nn.functional.scaled_dot_product_attention(
        split(module.query(hidden_states)), split(module.key(key_value_states)), split(module.value(key_value_states))
    )
    return context.transpose(1, 2).flatten(2)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_qformer_attention_is_unchanged_and_not_causal(tiny_parts, implementation):
    model = copy.deepcopy(tiny_parts[0])
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    attention = model.model.connector.qformer.layer[0].attention.self
    hidden = model.config.audio_config.d_model
    generator = torch.Generator().manual_seed(0)
    queries, frames = torch.randn(2, 8, hidden, generator=generator), torch.randn(2, 30, hidden, generator=generator)
    with torch.no_grad():
        for kv in (queries, frames):  # self-attention, cross-attention
            exact = 0 if implementation == "sdpa" else 1e-6
            torch.testing.assert_close(
                attention(queries, kv), _old_qformer_attention(attention, queries, kv), rtol=0, atol=exact
            )
        changed = queries.clone()
        changed[:, -1] += 1.0
        # The first query's output moves when the last query changes: the self-attention looks forward.
        assert (attention(queries, queries)[:, 0] - attention(changed, changed)[:, 0]).abs().max() > 1e-4


def test_qformer_kernel_comes_from_the_attention_interface(tiny_parts):
    """`set_attn_implementation` reaches the Q-Former: a registered kernel is the one its attention calls."""
    calls = []

    def recording_sdpa(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("desta_test_recording_sdpa", recording_sdpa)
    model = copy.deepcopy(tiny_parts[0])
    model.set_attn_implementation("desta_test_recording_sdpa")
    connector = model.model.connector
    taps = [torch.randn(1, 30, model.config.audio_config.d_model)] * len(connector.layer_prompts)
    with torch.no_grad():
        connector(taps)
    # Each tap goes through the shared Q-Former in its own pass: self- and cross-attention per layer.
    assert calls == ["DestaQFormerAttention"] * 2 * len(connector.qformer.layer) * len(connector.layer_prompts)


def test_eager_and_sdpa_give_the_same_logits(tiny_parts, audio_dir):
    sdpa = tiny_parts[0]
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert eager.config.text_config._attn_implementation == eager.config.audio_config._attn_implementation == "eager"
    audio = _audio_inputs(tiny_parts[1], audio_dir)
    text = {"input_ids": _text_ids_with_placeholders(tiny_parts[1])}
    with torch.no_grad():
        for inputs in (audio, text):
            torch.testing.assert_close(eager(**inputs).logits, sdpa(**inputs).logits, rtol=0, atol=1e-5)


def test_static_cache_and_compiled_decoding_give_the_same_tokens(tiny_parts, audio_dir):
    """`_can_compile_fullgraph = True` is honest: the decode step compiles as one graph (`fullgraph=True`)."""
    model, processor = tiny_parts
    assert DestaForConditionalGeneration._can_compile_fullgraph
    inputs = _audio_inputs(processor, audio_dir)
    dynamic = _greedy(model, **inputs, max_new_tokens=5)
    static = _greedy(model, **inputs, max_new_tokens=5, cache_implementation="static")
    # The "eager" backend runs dynamo's tracing (which fails on any graph break with fullgraph=True) without the
    # minutes inductor would need on a CPU.
    compile_config = CompileConfig(backend="eager", mode="default", fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # generate compiles only on accelerators otherwise
    torch._dynamo.reset()
    compiled = _greedy(model, **inputs, max_new_tokens=5, cache_implementation="static", compile_config=compile_config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really went through dynamo
    assert torch.equal(static, dynamic) and torch.equal(compiled, dynamic)
