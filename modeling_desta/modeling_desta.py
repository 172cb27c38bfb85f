"""DeSTA2.5-Audio: a frozen Whisper, a Q-Former connector and a causal LM, as a transformers model.

Layout (what `state_dict()` holds):
    model.audio_tower      the whole `WhisperForConditionalGeneration` (encoder for the connector, decoder for ASR)
    model.connector        layer prompts, layer weights, one shared Q-Former, LayerNorm + Linear projection
    model.language_model   the causal LM's base model (e.g. `LlamaModel`)
    lm_head                the causal LM's output projection

The connector's parameter names follow the reference checkpoint's BERT layout, so converting one is a pure
prefix rename: `perception.connector.` -> `model.connector.`.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
    WhisperForConditionalGeneration,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.utils import can_return_tuple

from .compat_desta import CACHE_NAME, accepts_cache_kwarg, cache_field, output_cache, slice_logits_to_keep
from .configuration_desta import DestaConfig, DestaReleaseConfig
from .connector_desta import DestaConnector
from .loading_desta import DestaAssemblyMixin
from .transcription_desta import WindowTranscripts, transcribe_clips, transcribe_windows

CONNECTOR_MODULE_NAMES = ["connector", "model.connector"]


class DestaPreTrainedModel(PreTrainedModel):
    config: DestaConfig
    config_class = DestaConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    # `device_map="auto"` keeps the connector on one device; the audio tower's and the LLM's own `_no_split_modules`
    # (a Whisper layer, a decoder layer) are collected from them by `post_init`.
    _no_split_modules = ["DestaConnector"]
    # The connector is never quantized (transformers' quantizers skip `_keep_in_fp32_modules`) and stays float32 when
    # the rest loads in float16. Quantizers match a name from the model's root, so both roots are named: DestaModel's
    # and the head model's. (`_keep_in_fp32_modules_strict`, for bfloat16 too, would need the connector's weights
    # created in float32 whatever the default dtype, which transformers' common tests check; not done yet.)
    _keep_in_fp32_modules = CONNECTOR_MODULE_NAMES
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # A decode step is the embedding lookup plus the LLM (audio is spliced in at prefill only), so it traces
    # without graph breaks; tests/test_model_contract.py compiles it with `fullgraph=True`.
    _can_compile_fullgraph = True
    # Read by the assisted decoding of transformers after 5.25 (its generation tests ask every model): DeSTA's KV cache
    # is an ordinary one, so candidate tokens can be rolled back.
    _is_stateful = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DestaConnector):
            for prompt in module.layer_prompts:
                init.normal_(prompt, mean=0.0, std=1.0)
            init.zeros_(module.layer_weights)


class DestaModel(DestaPreTrainedModel):
    """Whisper + connector + the LLM's base model; returns the LLM's last hidden state."""

    def __init__(self, config: DestaConfig):
        super().__init__(config)
        self.audio_tower = WhisperForConditionalGeneration(config.audio_config)
        if config.asr_generation_config:
            self.audio_tower.generation_config = GenerationConfig.from_dict(config.asr_generation_config)
        self.connector = DestaConnector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @property
    def audio_encoder(self):
        return self.audio_tower.get_encoder()

    def encode_audio(
        self, input_features: torch.Tensor, output_last_hidden_state: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`encode_taps` on this model's Whisper encoder and `audio_layer_ids`."""
        return encode_taps(
            self.audio_encoder,
            input_features,
            self.config.audio_layer_ids,
            output_last_hidden_state,
            tap_layer_norm=self.config.audio_tap_layer_norm,
        )

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.Tensor,
        output_last_hidden_state: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Connector outputs for every 30 s window, and the Whisper states of the one encoder pass behind them.

        - `pooler_output`: the connector outputs, `(num_windows * num_audio_queries, hidden)`, in placeholder order.
        - `last_hidden_state`: the last state of the Whisper layers that ran (see `encode_audio`); with
          `output_last_hidden_state=True` every layer runs, so it is Whisper's encoder output, ready for ASR.
        - `hidden_states` / `attentions` (when asked, or set in the config): as Whisper's encoder reports them,
          for the layers that ran (attention weights need an eager audio tower).
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        encoder = self.audio_encoder
        with _recorded_encoder_outputs(encoder, output_hidden_states, output_attentions) as recorded:
            taps, last_hidden_state = self.encode_audio(input_features, output_last_hidden_state)
        hidden_states = recorded["hidden_states"]
        if len(hidden_states) == len(encoder.layers) + 1:
            hidden_states[-1] = last_hidden_state  # Whisper reports its final state after the layer norm
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=self.connector(taps, input_features).flatten(0, 1),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(recorded["attentions"]) if output_attentions else None,
        )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, audio_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Boolean `(batch, length, 1)` mask of the audio placeholders, after checking there is one per audio vector.

        Placeholders are found in `input_ids`, or, without ids, as the positions holding the placeholder's embedding.
        """
        if input_ids is None:
            placeholder = self.get_input_embeddings()(
                torch.tensor(self.config.audio_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == self.config.audio_token_id
        num_placeholders = int(mask.sum())
        if num_placeholders != audio_embeds.shape[0]:
            queries = self.config.num_audio_queries
            raise ValueError(
                f"The input holds {num_placeholders} audio placeholder tokens (id {self.config.audio_token_id}) "
                f"but the audio gives {audio_embeds.shape[0]} vectors ({audio_embeds.shape[0] // queries} windows x "
                f"{queries} queries). Build inputs with DestaProcessor so each audio gets one placeholder per vector."
            )
        return mask.unsqueeze(-1).to(inputs_embeds.device)

    @accepts_cache_kwarg
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Audio (as `input_features`, or precomputed `audio_embeds`) replaces its placeholders; without audio,
        placeholder ids are ordinary tokens, as in transformers' Voxtral and Qwen2-Audio."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if audio_embeds is None and input_features is not None:
            audio_embeds = self.get_audio_features(
                input_features, output_hidden_states=False, output_attentions=False, return_dict=True
            ).pooler_output
        if audio_embeds is not None:
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(
                mask, audio_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            )
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **cache_field(cache),
            **kwargs,
        )
        return BaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **cache_field(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def encode_taps(
    encoder,
    input_features: torch.Tensor,
    tap_ids: list[int],
    output_last_hidden_state: bool = False,
    tap_layer_norm: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the Whisper encoder once: the tapped states of the layers `tap_ids` and the last state.

    Taps are the layers' raw outputs (before the final layer norm, as in the release), or with `tap_layer_norm`
    (the config's `audio_tap_layer_norm`) those outputs through the encoder's own final layer norm.

    Shared by the model and the vLLM plugin's worker, so both compute the same taps.

    Layers past the deepest tap are skipped unless `output_last_hidden_state` asks for every layer (what
    Whisper's decoder needs for ASR); both results then come from the same pass. The last state is Whisper's
    own encoder output (final layer norm applied) whenever every layer ran, which the default taps (ending at
    the last layer) always do; otherwise it is the deepest tap's output.
    """
    expected_frames = encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    if input_features.ndim != 3 or input_features.shape[-1] != expected_frames:
        raise ValueError(
            f"input_features must have shape (num_windows, {encoder.config.num_mel_bins}, {expected_frames}) "
            f"(one padded 30 s window per row), got {tuple(input_features.shape)}."
        )
    # A frozen encoder needs no graph, but `enable_input_require_grads` (run by activation checkpointing and
    # PEFT) marks its conv output as requiring grad; without this, training would keep every encoder
    # activation and backpropagate through all its layers for nothing.
    needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
    with torch.set_grad_enabled(needs_grad):
        input_features = input_features.to(encoder.conv1.weight.dtype)
        hidden_states = F.gelu(encoder.conv1(input_features))
        hidden_states = F.gelu(encoder.conv2(hidden_states)).permute(0, 2, 1)
        # Called as a module (not `.weight[:n]`) so that an offloaded encoder's hooks load the table first.
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
        hidden_states = hidden_states + encoder.embed_positions(positions)
        hidden_states = F.dropout(hidden_states, p=encoder.dropout, training=encoder.training)
        last_layer = len(encoder.layers) - 1 if output_last_hidden_state else tap_ids[-1]
        taps = []
        for index, layer in enumerate(encoder.layers[: last_layer + 1]):
            hidden_states = layer(hidden_states, None)
            if index in tap_ids:
                taps.append(encoder.layer_norm(hidden_states) if tap_layer_norm else hidden_states)
        if last_layer == len(encoder.layers) - 1:
            hidden_states = encoder.layer_norm(hidden_states)
    return taps, hidden_states


@contextmanager
def _recorded_encoder_outputs(encoder, hidden_states: bool, attentions: bool):
    """Collect, while the block runs, each encoder layer's input and output and its attention weights.

    Hooks rather than a second code path, so the states are those of the very pass that fed the connector.
    Attention weights exist only where the audio tower's attention is eager (sdpa does not return them).
    """
    recorded = {"hidden_states": [], "attentions": []}

    def record_hidden_states(module, args, output):
        if not recorded["hidden_states"]:
            recorded["hidden_states"].append(args[0])
        recorded["hidden_states"].append(output)

    def record_attentions(module, args, output):
        if output[1] is not None:
            recorded["attentions"].append(output[1])

    handles = []
    for layer in encoder.layers:
        if hidden_states:
            handles.append(layer.register_forward_hook(record_hidden_states))
        if attentions:
            handles.append(layer.self_attn.register_forward_hook(record_attentions))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


class DestaForConditionalGeneration(DestaAssemblyMixin, DestaPreTrainedModel, GenerationMixin):
    """DeSTA2.5-Audio with a language-modelling head: audio + text in, text out."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # The LLM's plan (collected from `model.language_model`) shards `embed_tokens` on the vocabulary; the head
    # is sharded on the same dimension, so a tied head and embedding stay one consistent tensor.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: DestaConfig):
        super().__init__(config)
        self.model = DestaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_audio_features(self, input_features: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_features, **kwargs)

    @accepts_cache_kwarg
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            input_features=input_features,
            audio_embeds=audio_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_field(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        audio_embeds = kwargs.pop("audio_embeds", None)
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # Audio is spliced in at prefill only (transformers drops `input_features` after it; `audio_embeds` is ours):
        # decode steps reuse the KV cache and never re-run the encoder.
        if audio_embeds is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            model_inputs["audio_embeds"] = audio_embeds
        if _audio_already_cached(model_inputs, self.config.audio_token_id):
            model_inputs.pop("audio_embeds", None)
            model_inputs.pop("input_features", None)
        return model_inputs

    def transcribe_clips(
        self,
        encoder_last_hidden_state: torch.Tensor,
        waveforms: list,
        window_counts: list[int],
        tokenizer,
        window_samples: int,
        **options,
    ) -> list[str | None]:
        """Whisper's transcript of each clip, with the speech/no-speech rule, from the encoder states of the pass
        that fed the connector (`get_audio_features(..., output_last_hidden_state=True).last_hidden_state`); see
        `transcription_desta.transcribe_clips` for the options. `tokenizer` is Whisper's own (the processor's
        `asr_tokenizer`)."""
        return transcribe_clips(
            self.model.audio_tower,
            tokenizer,
            encoder_last_hidden_state,
            waveforms,
            window_counts,
            window_samples,
            **options,
        )

    def transcribe_windows(
        self, encoder_last_hidden_state: torch.Tensor, max_new_tokens: int, no_speech_threshold: float | None = None
    ) -> WindowTranscripts:
        """Whisper's greedy transcription of each 30 s window, in a lean loop (see `transcription_desta`).

        Windows whose no-speech probability exceeds `no_speech_threshold` are never decoded. The tokens equal
        `transcribe`'s (and so `whisper.generate`'s) at a fraction of `generate`'s per-step overhead.
        """
        return transcribe_windows(
            self.model.audio_tower, encoder_last_hidden_state, max_new_tokens, no_speech_threshold
        )


def _audio_already_cached(model_inputs: dict, audio_token_id: int | None) -> bool:
    """True when a generate call continues from a cache and the uncached ids it feeds hold no placeholder.

    The audio of such a call was spliced in when its placeholders entered the cache (an earlier generate call);
    re-sending its features would find no placeholders to fill.
    """
    has_audio = model_inputs.get("audio_embeds") is not None or model_inputs.get("input_features") is not None
    cache, input_ids = model_inputs.get(CACHE_NAME), model_inputs.get("input_ids")
    if not has_audio or input_ids is None or cache is None or cache.get_seq_length() == 0:
        return False
    return not bool((input_ids == audio_token_id).any())


def _register_auto_classes() -> None:
    """Registration for `pip install` users; `auto_map` in the config covers remote-code users."""
    from transformers import AutoModelForMultimodalLM

    try:
        AutoConfig.register("desta", DestaConfig)
        AutoConfig.register(DestaReleaseConfig.model_type, DestaReleaseConfig)
    except ValueError:
        return  # already registered (module imported twice under different names)
    for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForMultimodalLM):
        auto_class.register(DestaConfig, DestaForConditionalGeneration)
        # A release-format config loads into the same class (`from_pretrained` fetches its components); the
        # mapping is registered directly because `register` insists the model's own config_class is the key.
        auto_class._model_mapping.register(DestaReleaseConfig, DestaForConditionalGeneration, exist_ok=True)


DestaConfig.register_for_auto_class()
DestaForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")
_register_auto_classes()

__all__ = ["DestaConfig", "DestaConnector", "DestaModel", "DestaForConditionalGeneration", "DestaPreTrainedModel"]
