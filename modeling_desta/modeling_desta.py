"""DeSTA2.5-Audio: a frozen Whisper, a Q-Former connector and a causal LM, as a transformers model.

Layout (what `state_dict()` holds):
    model.audio_tower      the whole `WhisperForConditionalGeneration` (encoder for the connector, decoder for ASR)
    model.connector        layer prompts, layer weights, one shared Q-Former, LayerNorm + Linear projection
    model.language_model   the causal LM's base model (e.g. `LlamaModel`)
    lm_head                the causal LM's output projection

The connector's parameter names follow the reference checkpoint's BERT layout, so converting one is a pure
prefix rename: `perception.connector.` -> `model.connector.`.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
    WhisperForConditionalGeneration,
)
from transformers import initialization as init
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import load_state_dict

from .configuration_desta import DestaConfig, DestaReleaseConfig
from .connector_desta import DestaConnector
from .release_desta import (
    HUB_KWARGS,
    REFERENCE_QFORMER_SETTINGS,
    check_release_config,
    fetch_component,
    hub_kwargs,
    is_release_config,
    map_connector_state_dict,
    pick_audio_token,
    read_config_dict,
    reference_audio_layer_ids,
    release_weights_file,
)


class DestaPreTrainedModel(PreTrainedModel):
    config: DestaConfig
    config_class = DestaConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    # The audio tower's and the LLM's own `_no_split_modules` are collected from them by `post_init`.
    _no_split_modules = ["DestaQFormerLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

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
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Run the Whisper encoder once and return the tapped states (pre-final-LN) of `audio_layer_ids`.

        Layers past the deepest tap are skipped unless `output_last_hidden_state` asks for the encoder's
        normed output too (what Whisper's decoder needs for ASR); then both come from the same pass.
        """
        encoder = self.audio_encoder
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
            hidden_states = hidden_states + encoder.embed_positions.weight[: hidden_states.shape[1]]
            hidden_states = F.dropout(hidden_states, p=encoder.dropout, training=encoder.training)

            tap_ids = self.config.audio_layer_ids
            last_layer = len(encoder.layers) - 1 if output_last_hidden_state else tap_ids[-1]
            taps = []
            for index, layer in enumerate(encoder.layers[: last_layer + 1]):
                hidden_states = layer(hidden_states, None)
                if index in tap_ids:
                    taps.append(hidden_states)
            last_hidden_state = encoder.layer_norm(hidden_states) if output_last_hidden_state else None
        return taps, last_hidden_state

    def get_audio_features(
        self, input_features: torch.Tensor, output_last_hidden_state: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Connector outputs for every 30 s window, flattened to `(num_windows * num_audio_queries, hidden)`.

        `pooler_output` holds them in placeholder order; `last_hidden_state` holds Whisper's normed encoder
        output (same pass) when `output_last_hidden_state=True`, for transcription without a second run.
        """
        taps, last_hidden_state = self.encode_audio(input_features, output_last_hidden_state)
        audio_embeds = self.connector(taps).flatten(0, 1)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=audio_embeds)

    def get_placeholder_mask(self, input_ids: torch.LongTensor, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the audio placeholder positions, after checking there is one per audio vector."""
        mask = input_ids == self.config.audio_token_id
        num_placeholders = int(mask.sum())
        if num_placeholders != audio_embeds.shape[0]:
            queries = self.config.num_audio_queries
            raise ValueError(
                f"The input holds {num_placeholders} audio placeholder tokens (id {self.config.audio_token_id}) "
                f"but the audio gives {audio_embeds.shape[0]} vectors ({audio_embeds.shape[0] // queries} windows x "
                f"{queries} queries). Build inputs with DestaProcessor so each audio gets one placeholder per vector."
            )
        return mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if audio_embeds is None and input_features is not None:
            audio_embeds = self.get_audio_features(input_features).pooler_output
        if audio_embeds is not None:
            if input_ids is None:
                raise ValueError("Audio inputs need input_ids to locate the audio placeholders.")
            mask = self.get_placeholder_mask(input_ids, audio_embeds).unsqueeze(-1).to(inputs_embeds.device)
            inputs_embeds = inputs_embeds.masked_scatter(
                mask, audio_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            )
        elif input_ids is not None and _is_prefill(past_key_values):
            self._check_no_orphan_placeholders(input_ids)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return BaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _check_no_orphan_placeholders(self, input_ids: torch.LongTensor) -> None:
        if self.config.audio_token_id is None:
            return
        num_placeholders = int((input_ids == self.config.audio_token_id).sum())
        if num_placeholders:
            raise ValueError(
                f"The input holds {num_placeholders} audio placeholder tokens but no input_features were given."
            )


class SuppressTokensOnce(LogitsProcessor):
    """Whisper's always-suppressed tokens, masked with a mask built once per call.

    transformers' `SuppressTokensLogitsProcessor` rebuilds the mask with `torch.isin` over the whole vocabulary
    at every decoding step: about a quarter of a Whisper tiny.en decode step on CPU, far more when threads are
    oversubscribed.
    """

    def __init__(self, token_ids: list[int], vocab_size: int):
        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[torch.tensor(list(token_ids), dtype=torch.long)] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.mask.device != scores.device:
            self.mask = self.mask.to(scores.device)
        return scores.masked_fill(self.mask[: scores.shape[-1]], -float("inf"))


def _is_prefill(past_key_values) -> bool:
    return past_key_values is None or past_key_values.get_seq_length() == 0


class DestaForConditionalGeneration(DestaPreTrainedModel, GenerationMixin):
    """DeSTA2.5-Audio with a language-modelling head: audio + text in, text out."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
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
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        audio_embeds = kwargs.pop("audio_embeds", None)
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # Audio is spliced in at prefill only; decode steps reuse the KV cache and never re-run the encoder.
        if audio_embeds is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            model_inputs["audio_embeds"] = audio_embeds
        return model_inputs

    @torch.no_grad()
    def transcribe(
        self,
        input_features: torch.Tensor | None = None,
        encoder_last_hidden_state: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Whisper's own greedy transcription, as Whisper token ids (decode with the Whisper tokenizer).

        Pass `encoder_last_hidden_state` from `get_audio_features(..., output_last_hidden_state=True)` to reuse
        the encoder pass that fed the connector; otherwise the encoder runs on `input_features`.
        """
        whisper = self.model.audio_tower
        if encoder_last_hidden_state is None:
            if input_features is None:
                raise ValueError("transcribe needs input_features or encoder_last_hidden_state.")
            _, encoder_last_hidden_state = self.model.encode_audio(input_features, output_last_hidden_state=True)
        generate_kwargs.setdefault("do_sample", False)
        suppressed = whisper.generation_config.suppress_tokens
        if suppressed and "suppress_tokens" not in generate_kwargs:
            generate_kwargs["suppress_tokens"] = None
            processors = generate_kwargs.pop("logits_processor", None) or LogitsProcessorList()
            generate_kwargs["logits_processor"] = LogitsProcessorList(
                [SuppressTokensOnce(suppressed, whisper.config.vocab_size), *processors]
            )
        encoder_outputs = BaseModelOutputWithPooling(last_hidden_state=encoder_last_hidden_state)
        num_windows, _, _ = encoder_last_hidden_state.shape
        placeholder_features = encoder_last_hidden_state.new_zeros(
            num_windows, whisper.config.num_mel_bins, 2 * whisper.config.max_source_positions
        )
        return whisper.generate(input_features=placeholder_features, encoder_outputs=encoder_outputs, **generate_kwargs)

    @torch.no_grad()
    def no_speech_probability(self, encoder_last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Whisper's probability that each window holds no speech (one decoder step at start-of-transcript).

        The same signal OpenAI's Whisper uses to blank silent segments; it needs no extra model or network.
        """
        whisper = self.model.audio_tower
        generation_config = whisper.generation_config
        no_speech_token = generation_config.no_timestamps_token_id - 1
        start = torch.full(
            (encoder_last_hidden_state.shape[0], 1),
            generation_config.decoder_start_token_id,
            dtype=torch.long,
            device=encoder_last_hidden_state.device,
        )
        logits = whisper(encoder_outputs=(encoder_last_hidden_state,), decoder_input_ids=start, use_cache=False).logits
        return logits[:, 0].float().softmax(dim=-1)[:, no_speech_token]

    @classmethod
    def from_components(
        cls,
        llm: str | os.PathLike | PreTrainedModel,
        whisper: str | os.PathLike | PreTrainedModel,
        processor=None,
        audio_token_id: int | None = None,
        vocab_size: int | None = None,
        dtype: torch.dtype | str | None = None,
        **config_overrides,
    ) -> "DestaForConditionalGeneration":
        """A fresh DeSTA model from a pretrained causal LM and a pretrained Whisper (ids, folders or models).

        The LLM and Whisper modules become the model's own, without a copy (a model passed in is taken over);
        the connector is freshly initialised. The audio token, vocabulary size and `num_audio_queries` come from
        `processor` when given (an override that contradicts it is an error); without one, the audio token is
        picked from the LLM's tokenizer by the same rule as `DestaProcessor.from_components(llm, whisper)`, so
        the pair always agrees. Embeddings are resized only if the tokenizer outgrew them.
        """
        audio_token_id, vocab_size = _audio_token_settings(llm, processor, audio_token_id, vocab_size, config_overrides)
        llm_model = llm if isinstance(llm, PreTrainedModel) else AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
        whisper_model = (
            whisper
            if isinstance(whisper, PreTrainedModel)
            else WhisperForConditionalGeneration.from_pretrained(whisper, dtype=dtype)
        )
        return cls._assemble(llm_model, whisper_model, audio_token_id, vocab_size, config_overrides)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a saved checkpoint as usual, or the authors' release format (`model_type` `desta25`) by fetching
        the LLM and Whisper it names (see `from_release`)."""
        release = _release_config(pretrained_model_name_or_path, config, kwargs)
        if release is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        return cls.from_release(pretrained_model_name_or_path, release, **kwargs)

    @classmethod
    def from_release(
        cls,
        path_or_repo: str | os.PathLike,
        release: dict | None = None,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> "DestaForConditionalGeneration":
        """The model of a checkpoint in the release format: its connector, on the LLM and Whisper it names.

        `revision` selects the release's own files; `token`, `cache_dir`, `local_files_only`, `force_download` and
        `proxies` apply to the release and to both components. Every connector key is mapped strictly (a missing,
        extra or misshapen key is a `ValueError` naming it); a component that cannot be fetched (gated,
        missing, offline) is an `OSError` of one line.
        """
        fetch = hub_kwargs(kwargs)
        dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
        _check_release_kwargs(kwargs)
        source = str(path_or_repo)
        release = check_release_config(release or read_config_dict(path_or_repo, revision, **fetch) or {}, source)
        llm_id, whisper_id = str(release["llm_model_id"]), str(release["encoder_model_id"])
        tokenizer = fetch_component(AutoTokenizer.from_pretrained, llm_id, "LLM (llm_model_id)", source, **fetch)
        placeholder = release["placeholder_token"]
        if placeholder not in tokenizer.get_vocab():
            raise ValueError(
                f"placeholder_token {placeholder!r} is not in the tokenizer of {llm_id}; the reference requires an "
                "existing token, so this checkpoint does not belong to that LLM."
            )
        llm_kwargs = {"attn_implementation": kwargs["attn_implementation"]} if "attn_implementation" in kwargs else {}
        llm_model = fetch_component(
            AutoModelForCausalLM.from_pretrained,
            llm_id,
            "LLM (llm_model_id)",
            source,
            dtype=dtype,
            **fetch,
            **llm_kwargs,
        )
        whisper_model = fetch_component(
            WhisperForConditionalGeneration.from_pretrained,
            whisper_id,
            "Whisper (encoder_model_id)",
            source,
            dtype=dtype,
            **fetch,
        )
        overrides = {
            "num_audio_queries": int(release["prompt_size"]),
            "audio_layer_ids": reference_audio_layer_ids(whisper_model.config.encoder_layers),
            "qformer_num_hidden_layers": int(release["qformer_num_hidden_layers"]),
            "qformer_num_attention_heads": whisper_model.config.encoder_attention_heads,
            **REFERENCE_QFORMER_SETTINGS,
        }
        connector_state = load_state_dict(release_weights_file(path_or_repo, revision, **fetch))
        model = cls._assemble(
            llm_model,
            whisper_model,
            tokenizer.convert_tokens_to_ids(placeholder),
            len(tokenizer),
            overrides,
            connector_state=connector_state,
        )
        model.config._name_or_path = source
        return model

    @classmethod
    def _assemble(
        cls,
        llm_model: PreTrainedModel,
        whisper_model: WhisperForConditionalGeneration,
        audio_token_id: int | None,
        vocab_size: int | None,
        config_overrides: dict,
        connector_state: dict[str, torch.Tensor] | None = None,
    ) -> "DestaForConditionalGeneration":
        """The model around loaded components, without allocating or copying their weights a second time.

        The skeleton is built on the meta device; the LLM's decoder and head and the whole Whisper become its
        modules as they are (Whisper cast to the LLM's dtype); only the connector gets new memory, initialised
        afresh or assigned from `connector_state` (release-format keys, mapped strictly).
        """
        if vocab_size is not None and vocab_size > llm_model.get_input_embeddings().weight.shape[0]:
            llm_model.resize_token_embeddings(vocab_size, mean_resizing=True)
        whisper_model.to(llm_model.dtype)
        config = DestaConfig(
            audio_config=whisper_model.config,
            text_config=llm_model.config,
            audio_token_id=audio_token_id,
            asr_generation_config=_generation_config_dict(whisper_model.generation_config),
            **config_overrides,
        )
        with torch.device("meta"):
            model = cls(config)
        model.model.audio_tower = whisper_model
        model.model.language_model = llm_model.get_decoder()
        model.lm_head = llm_model.get_output_embeddings()
        model.model.connector = _connector(model, connector_state, llm_model.dtype)
        model.generation_config = llm_model.generation_config
        model.tie_weights()
        left_on_meta = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
        if left_on_meta:
            raise RuntimeError(f"Assembling the model left tensors without data: {left_on_meta[:5]}")
        return model.eval()


def _connector(model: DestaPreTrainedModel, state: dict | None, dtype: torch.dtype) -> DestaConnector:
    """A connector for `model`: freshly initialised, or holding the release tensors in `state` (no copy)."""
    if state is None:
        connector = DestaConnector(model.config).to(dtype)
        connector.apply(model._init_weights)
        return connector
    with torch.device("meta"):
        connector = DestaConnector(model.config)
    target_shapes = {name: tensor.shape for name, tensor in connector.state_dict().items()}
    mapped = map_connector_state_dict(state, target_shapes)
    connector.load_state_dict({name: tensor.to(dtype) for name, tensor in mapped.items()}, strict=True, assign=True)
    return connector


def _audio_token_settings(llm, processor, audio_token_id, vocab_size, config_overrides) -> tuple[int, int | None]:
    """(audio token id, vocabulary size) for `from_components`: the processor's, or the shared rule's."""
    if processor is not None:
        given = {
            "audio_token_id": (audio_token_id, processor.audio_token_id),
            "vocab_size": (vocab_size, len(processor.tokenizer)),
            "num_audio_queries": (config_overrides.get("num_audio_queries"), processor.num_audio_queries),
        }
        conflicts = [
            f"{name}={ours} (processor: {theirs})"
            for name, (ours, theirs) in given.items()
            if ours not in (None, theirs)
        ]
        if conflicts:
            raise ValueError(
                f"from_components got {', '.join(conflicts)}, contradicting the processor passed with them; pass "
                "either the processor or the values, or build the processor with the values you want."
            )
        config_overrides["num_audio_queries"] = processor.num_audio_queries
        return processor.audio_token_id, len(processor.tokenizer)
    if audio_token_id is not None:
        return audio_token_id, vocab_size
    source = llm.name_or_path if isinstance(llm, PreTrainedModel) else llm
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"from_components needs the LLM's tokenizer to pick the audio token and found none at {source!r}; pass "
            "processor=DestaProcessor.from_components(llm, whisper) or audio_token_id=."
        ) from error
    audio_token = pick_audio_token(tokenizer.get_vocab())
    if audio_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [audio_token]})
    return tokenizer.convert_tokens_to_ids(audio_token), len(tokenizer) if vocab_size is None else vocab_size


# Keyword arguments transformers' Auto classes and pipelines pass that mean nothing for a release folder.
IGNORED_RELEASE_KWARGS = {
    "trust_remote_code",
    "code_revision",
    "use_safetensors",
    "attn_implementation",
    "adapter_kwargs",
}


def _check_release_kwargs(kwargs: dict) -> None:
    """Refuse options a release load would otherwise drop silently (e.g. `device_map`); unset ones are fine."""
    unknown = sorted(
        key
        for key, value in kwargs.items()
        if value not in (None, {}) and not key.startswith("_") and key not in IGNORED_RELEASE_KWARGS | set(HUB_KWARGS)
    )
    if unknown:
        raise TypeError(f"Loading a release-format checkpoint does not support {unknown}.")


def _release_config(path, config, kwargs: dict) -> dict | None:
    """The release-format config behind a `from_pretrained` call, or None for an ordinary checkpoint."""
    if isinstance(config, DestaReleaseConfig):
        return config.to_dict()
    if config is not None or path is None or kwargs.get("gguf_file") or kwargs.get("subfolder"):
        return None
    found = read_config_dict(path, kwargs.get("revision"), **hub_kwargs(kwargs))
    return found if is_release_config(found) else None


def _generation_config_dict(generation_config: GenerationConfig) -> dict:
    config = generation_config.to_diff_dict()
    config.pop("transformers_version", None)
    return config


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
