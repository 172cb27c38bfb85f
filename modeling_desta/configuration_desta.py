"""Configuration of DeSTA2.5-Audio: a Whisper audio tower, a Q-Former connector and a causal LM."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .release_desta import REFERENCE_AUDIO_LAYER_IDS, RELEASE_MODEL_TYPE

# The one-line `pipeline("audio-text-to-text", model=..., trust_remote_code=True)`: its code travels with the
# processor (processing_desta.py imports pipeline_desta.py, so saving the processor copies both).
CUSTOM_PIPELINES = {
    "audio-text-to-text": {
        "impl": "pipeline_desta.DestaAudioTextToTextPipeline",
        "pt": ["AutoModelForCausalLM"],
        "tf": [],
        "type": "multimodal",
    }
}

AUTO_MAP = {
    "AutoConfig": "configuration_desta.DestaConfig",
    "AutoModel": "modeling_desta.DestaForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_desta.DestaForConditionalGeneration",
    "AutoModelForMultimodalLM": "modeling_desta.DestaForConditionalGeneration",
}


# Defaults mirror the release: whisper-large-v3 and Llama-3.1-8B-Instruct.
RELEASE_AUDIO_CONFIG = {
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 32,
    "encoder_attention_heads": 20,
    "decoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "vocab_size": 51866,
}
RELEASE_TEXT_CONFIG = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
}


def _sub_config(value, default_model_type: str, defaults: dict) -> PreTrainedConfig:
    """A sub-config from a config object, a dict (its `model_type`, else the default one) or None (the release's)."""
    if isinstance(value, PreTrainedConfig):
        return value
    if value is None:
        return CONFIG_MAPPING[default_model_type](**defaults)
    if not isinstance(value, dict):
        raise TypeError(f"A DeSTA sub-config must be a dict, a PreTrainedConfig or None, got {type(value).__name__}.")
    value = dict(value)
    model_type = value.pop("model_type", default_model_type)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"Unknown sub-config model_type {model_type!r}: transformers has no config class for it.")
    return CONFIG_MAPPING[model_type](**value)


def default_audio_layer_ids(num_encoder_layers: int, num_taps: int = 4) -> list[int]:
    """Evenly spaced taps ending at the last encoder layer, the rule behind the reference's choices.

    `default_audio_layer_ids(32) == [7, 15, 23, 31]`, `default_audio_layer_ids(4) == [0, 1, 2, 3]`.
    """
    num_taps = min(num_taps, num_encoder_layers)
    step = num_encoder_layers // num_taps
    return [step * (i + 1) - 1 for i in range(num_taps)]


class DestaConfig(PreTrainedConfig):
    r"""
    Configuration of [`DestaForConditionalGeneration`].

    Args:
        audio_config (`dict` or `WhisperConfig`): the Whisper model (encoder and decoder) that hears the audio
            and transcribes it.
        text_config (`dict` or `PreTrainedConfig`): any causal language model's config (Llama by default).
        audio_layer_ids (`list[int]`): 0-based Whisper encoder layers whose outputs, taken *before* the
            encoder's final layer norm, feed the connector. Defaults to four evenly spaced layers ending at
            the last one (`[7, 15, 23, 31]` for whisper-large-v3).
        num_audio_queries (`int`, defaults to 64): learned queries per tap, hence vectors per 30 s window.
        qformer_num_hidden_layers (`int`, defaults to 6): depth of the shared Q-Former.
        qformer_num_attention_heads (`int`): heads of the Q-Former; defaults to the Whisper encoder's.
        qformer_intermediate_size (`int`, defaults to 3072): feed-forward width of the Q-Former.
        qformer_hidden_dropout_prob / qformer_attention_dropout_prob (`float`, defaults to 0.1).
        qformer_layer_norm_eps (`float`, defaults to 1e-12): the Q-Former's (BERT) layer norms.
        projector_layer_norm_eps (`float`, defaults to 1e-5): the layer norm before the LLM projection.
        audio_token_id (`int`): id of the placeholder token replaced by connector outputs.
        audio_start_text / audio_end_text (`str`): plain-text markers around each audio span.
        asr_generation_config (`dict`, *optional*): Whisper's own generation config (task tokens, no-speech
            token, suppressed tokens), kept so the saved checkpoint can transcribe like the source Whisper.
        audio_tap_layer_norm (`bool`, defaults to `False`): pass every tapped state through the Whisper encoder's
            own final layer norm before the connector. The release taps raw residual states (off).
        qformer_mask_padding (`bool`, defaults to `False`): the connector ignores the encoder positions that only
            hold Whisper's zero padding of the 30 s window (found in `input_features`). The release attends to all
            1500 positions (off).
        qformer_audio_queries (`bool`, defaults to `False`): add to each tap's learned queries a linear map of that
            tap's mean state over the clip's positions, so the queries, which post-LN layers keep dominant, start
            out carrying the clip. Not in the release (off). See docs/small_model.md for why a small model needs it.
    """

    model_type = "desta"
    # Plain `sub_configs` resolved in `__post_init__` (as Qwen2-Audio does) rather than 5.24's `SubConfigSpec`, which
    # transformers < 5.24 lacks: remote code runs under the user's transformers.
    sub_configs = {"audio_config": AutoConfig, "text_config": AutoConfig}

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_layer_ids: list[int] | None = None
    num_audio_queries: int = 64
    qformer_num_hidden_layers: int = 6
    qformer_num_attention_heads: int | None = None
    qformer_intermediate_size: int = 3072
    qformer_hidden_act: str = "gelu"
    qformer_hidden_dropout_prob: float = 0.1
    qformer_attention_dropout_prob: float = 0.1
    qformer_layer_norm_eps: float = 1e-12
    projector_layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    audio_token_id: int | None = None
    audio_start_text: str = "<start_audio>"
    audio_end_text: str = "<end_audio>"
    tie_word_embeddings: bool = False
    custom_pipelines: dict | None = None
    asr_generation_config: dict | None = None
    audio_tap_layer_norm: bool = False
    qformer_mask_padding: bool = False
    qformer_audio_queries: bool = False

    def __post_init__(self, **kwargs):
        self.audio_config = _sub_config(self.audio_config, "whisper", RELEASE_AUDIO_CONFIG)
        self.text_config = _sub_config(self.text_config, "llama", RELEASE_TEXT_CONFIG)
        super().__post_init__(**kwargs)
        num_encoder_layers = self.audio_config.encoder_layers
        if self.audio_layer_ids is None:
            self.audio_layer_ids = default_audio_layer_ids(num_encoder_layers)
        self.audio_layer_ids = [int(i) for i in self.audio_layer_ids]
        self._validate_audio_layer_ids(num_encoder_layers)
        if self.qformer_num_attention_heads is None:
            self.qformer_num_attention_heads = self.audio_config.encoder_attention_heads
        if self.audio_config.d_model % self.qformer_num_attention_heads:
            raise ValueError(
                f"qformer_num_attention_heads={self.qformer_num_attention_heads} does not divide the Whisper "
                f"hidden size d_model={self.audio_config.d_model}."
            )
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        if self.custom_pipelines is None:
            self.custom_pipelines = CUSTOM_PIPELINES

    def _validate_audio_layer_ids(self, num_encoder_layers: int) -> None:
        ids = self.audio_layer_ids
        if not ids:
            raise ValueError("audio_layer_ids must name at least one Whisper encoder layer.")
        if sorted(set(ids)) != ids:
            raise ValueError(f"audio_layer_ids must be strictly increasing, got {ids}.")
        if ids[0] < 0 or ids[-1] >= num_encoder_layers:
            raise ValueError(
                f"audio_layer_ids {ids} fall outside the Whisper encoder's {num_encoder_layers} layers (0-based)."
            )

    @property
    def vocab_size(self) -> int:
        """The language model's vocabulary size; setting it sets `text_config.vocab_size` (as resizing does)."""
        return self.text_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        self.text_config.vocab_size = value

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size


class DestaReleaseConfig(PreTrainedConfig):
    r"""
    The `config.json` of the authors' release (`model_type` `desta25`): a connector-only checkpoint that names the
    LLM and the Whisper it belongs to. Loading it with `AutoModel` / `DestaForConditionalGeneration.from_pretrained`
    fetches both and builds a [`DestaConfig`] model; fields not listed here (e.g. `info`) are kept as they are.
    """

    model_type = RELEASE_MODEL_TYPE
    processor_class: str | None = "DestaProcessor"
    llm_model_id: str | None = None
    encoder_model_id: str | None = None
    connector_mode: str = "qformer_1"
    prompt_size: int = 64
    qformer_num_hidden_layers: int = 6
    placeholder_token: str | None = None
    audio_locator: str = "<|AUDIO|>"
    use_lora: bool = False


__all__ = ["DestaConfig", "DestaReleaseConfig", "default_audio_layer_ids", "REFERENCE_AUDIO_LAYER_IDS"]
