"""Building a DeSTA model from parts: fresh from an LLM and a Whisper, or from the authors' release format.

`DestaForConditionalGeneration` inherits these constructors. Assembly builds the model's skeleton on the meta
device and takes the loaded LLM and Whisper modules as they are, so peak memory stays near the model's own size
and no weight is copied twice; only the connector gets new memory (fresh, or the release's tensors, assigned).
"""

import ast
import functools
import inspect
import os
import textwrap

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    WhisperConfig,
    WhisperForConditionalGeneration,
)
from transformers.modeling_utils import load_state_dict

from .configuration_desta import DestaConfig, DestaReleaseConfig
from .connector_desta import DestaConnector
from .release_desta import (
    HUB_KWARGS,
    REFERENCE_QFORMER_SETTINGS,
    fetch_component,
    fetch_release_tokenizer,
    hub_kwargs,
    is_release_config,
    map_connector_state_dict,
    pick_audio_token,
    read_config_dict,
    reference_audio_layer_ids,
    release_weights_file,
)


class DestaAssemblyMixin:
    """`from_components`, `from_release` and a `from_pretrained` that also reads the release format."""

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
    ) -> PreTrainedModel:
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
        check_connector_not_quantized(kwargs.get("quantization_config"))
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
    ) -> PreTrainedModel:
        """The model of a checkpoint in the release format: its connector, on the LLM and Whisper it names.

        `revision` selects the release's own files; `token`, `cache_dir`, `local_files_only`, `force_download` and
        `proxies` apply to the release and to both components. Every connector key is mapped strictly (a missing,
        extra or misshapen key is a `ValueError` naming it); a component that cannot be fetched (gated,
        missing, offline) is an `OSError` of one line.
        """
        fetch = hub_kwargs(kwargs)
        dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
        # Quantized while each component loads, shard by shard: the full-precision LLM is never held in memory.
        quantization = (
            {"quantization_config": kwargs.pop("quantization_config")} if kwargs.get("quantization_config") else {}
        )
        _check_release_kwargs(kwargs)
        source = str(path_or_repo)
        release, tokenizer = fetch_release_tokenizer(path_or_repo, release, revision, fetch)
        llm_id, whisper_id = str(release["llm_model_id"]), str(release["encoder_model_id"])
        placeholder = release["placeholder_token"]
        whisper_config = fetch_component(
            WhisperConfig.from_pretrained, whisper_id, "Whisper (encoder_model_id)", source, **fetch
        )
        llm_config = fetch_component(AutoConfig.from_pretrained, llm_id, "LLM (llm_model_id)", source, **fetch)
        overrides = {
            "num_audio_queries": int(release["prompt_size"]),
            "audio_layer_ids": reference_audio_layer_ids(whisper_config.encoder_layers),
            "qformer_num_hidden_layers": int(release["qformer_num_hidden_layers"]),
            "qformer_num_attention_heads": whisper_config.encoder_attention_heads,
            **REFERENCE_QFORMER_SETTINGS,
        }
        # Check every connector key before fetching gigabytes of LLM weights.
        connector_state = load_state_dict(release_weights_file(path_or_repo, revision, **fetch))
        _connector_tensors(
            DestaConfig(audio_config=whisper_config, text_config=llm_config, **overrides), connector_state
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
            **quantization,
        )
        whisper_model = fetch_component(
            WhisperForConditionalGeneration.from_pretrained,
            whisper_id,
            "Whisper (encoder_model_id)",
            source,
            dtype=dtype,
            **fetch,
            **quantization,
        )
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
    ) -> PreTrainedModel:
        """The model around loaded components, without allocating or copying their weights a second time.

        The skeleton is built on the meta device; the LLM's decoder and head and the whole Whisper become its
        modules as they are (Whisper cast to the LLM's dtype); only the connector gets new memory, initialised
        afresh or assigned from `connector_state` (release-format keys, mapped strictly), in float32 (as the reference
        runs it). A quantized LLM makes the model quantized (its quantizer and
        config travel with it); a quantized Whisper keeps its own dtypes.
        """
        if vocab_size is not None and vocab_size > llm_model.get_input_embeddings().weight.shape[0]:
            llm_model.resize_token_embeddings(vocab_size, mean_resizing=True)
        if getattr(whisper_model, "hf_quantizer", None) is None:
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
        model.model.connector = _connector(model, connector_state)
        model.generation_config = llm_model.generation_config
        model.tie_weights()
        if getattr(llm_model, "hf_quantizer", None) is not None:
            model.hf_quantizer = llm_model.hf_quantizer
            model.hf_quantizer.postprocess_model(model)
        left_on_meta = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
        if left_on_meta:
            raise RuntimeError(f"Assembling the model left tensors without data: {left_on_meta[:5]}")
        return model.eval()


def check_connector_not_quantized(quantization_config) -> None:
    """Refuse a quantization config that names connector modules (torchao's per-module `FqnToConfig`).

    The connector is small and carries the audio: transformers' quantizers skip it (`_keep_in_fp32_modules`), and a
    request to quantize it anyway is an error rather than a silently float32 connector.
    """
    per_module = getattr(getattr(quantization_config, "quant_type", None), "fqn_to_config", None) or {}
    named = sorted(key for key in per_module if "connector" in key)
    if named:
        raise ValueError(
            f"The quantization config names the connector ({', '.join(named)}); the connector always stays float32 "
            "and is never quantized. Remove those entries: the LLM and Whisper are quantized, the connector is not."
        )


def _connector(model: PreTrainedModel, state: dict | None) -> DestaConnector:
    """A float32 connector for `model`: freshly initialised, or holding the release tensors in `state`."""
    if state is None:
        connector = DestaConnector(model.config).float()
        connector.apply(model._init_weights)
        return connector
    with torch.device("meta"):
        connector = DestaConnector(model.config)
    mapped = _connector_tensors(model.config, state)
    connector.load_state_dict({name: tensor.float() for name, tensor in mapped.items()}, strict=True, assign=True)
    return connector


def _connector_tensors(config: DestaConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release tensors keyed for a connector of `config`, every key checked both ways (no memory used)."""
    with torch.device("meta"):
        target_shapes = {name: tensor.shape for name, tensor in DestaConnector(config).state_dict().items()}
    return map_connector_state_dict(state, target_shapes)


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


# Keyword arguments transformers' Auto classes and pipelines pass that a release load honours or that mean nothing
# for a release folder, whatever their value.
IGNORED_RELEASE_KWARGS = {
    "trust_remote_code",
    "code_revision",
    "use_safetensors",
    "attn_implementation",
    "adapter_kwargs",
}


@functools.cache
def neutral_from_pretrained_values() -> dict:
    """Each `PreTrainedModel.from_pretrained` keyword of the *installed* transformers with the value that changes
    nothing: its signature default, or the default of its `kwargs.pop("name", default)` in the source.

    Read from transformers itself so that a keyword a new release starts passing with its neutral value (5.25's
    `subfolder=""`) needs no edit here.
    """
    method = PreTrainedModel.from_pretrained
    neutral = {
        name: parameter.default
        for name, parameter in inspect.signature(method).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    except (OSError, TypeError, SyntaxError):  # no source (frozen install): the signature alone
        return neutral
    for node in ast.walk(tree):
        if _is_kwargs_pop(node) and len(node.args) == 2:
            try:
                neutral.setdefault(node.args[0].value, ast.literal_eval(node.args[1]))
            except ValueError:  # a default computed at run time is not neutral by itself
                continue
    return neutral


def _is_kwargs_pop(node) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "pop"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "kwargs"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _check_release_kwargs(kwargs: dict) -> None:
    """Refuse options a release load cannot honour and would otherwise drop (e.g. `device_map="auto"`).

    A keyword passed with a neutral value (None, an empty dict or string, transformers' own default for it) changes
    nothing and is accepted: Auto classes and pipelines pass several such.
    """
    neutral = neutral_from_pretrained_values()
    meaningful = sorted(
        key
        for key, value in kwargs.items()
        if not key.startswith("_")
        and key not in IGNORED_RELEASE_KWARGS | set(HUB_KWARGS)
        and not _is_neutral(value, neutral.get(key, None))
    )
    if meaningful:
        settings = ", ".join(f"{key}={kwargs[key]!r}" for key in meaningful)
        raise TypeError(
            f"Loading a release-format checkpoint does not support {settings}; convert it first "
            "(`desta-audio convert`) and load the converted folder with those options."
        )


def _is_neutral(value, default) -> bool:
    if value is None or (isinstance(value, (dict, str, list, tuple)) and not value):
        return True
    try:
        return bool(value == default)
    except Exception:  # e.g. tensors compare element-wise
        return False


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
