"""The `vllm.general_plugins` entry point: makes DeSTA checkpoints servable by `vllm serve` / `vllm.LLM`.

vLLM calls `register()` in every process it starts (API server, engine core, workers), so it only registers, and
does so idempotently:
- the architecture `DestaForConditionalGeneration` -> `vllm_model` (imported lazily, in the process that builds
  the model);
- the `desta` config type for `AutoConfig` (importing `modeling_desta` does it);
- a `desta` tokenizer mode: the plain Hugging Face tokenizer with the plugin's renderer (`vllm_renderer`), chosen
  automatically for DeSTA checkpoints as vLLM chooses its in-tree modes for Kimi-Audio or DeepSeek-V3.2;
- a clear refusal of the authors' release format (convert it first), before vLLM's own "unsupported
  architecture".
`VLLM_PLUGINS` (vLLM's own setting) can leave the plugin out.
"""

import json
import logging
from pathlib import Path

import modeling_desta  # noqa: F401  (registers the `desta` config with AutoConfig)
from modeling_desta.release_desta import RELEASE_MODEL_TYPE

logger = logging.getLogger(__name__)

ARCHITECTURE = "DestaForConditionalGeneration"
MODE = "desta"


def register() -> None:
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"desta_audio.serving.vllm_model:{ARCHITECTURE}")
    if MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(MODE, "vllm.tokenizers.hf", "CachedHfTokenizer")
    if MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(MODE, "desta_audio.serving.vllm_renderer", "DestaRenderer")
    _default_tokenizer_mode()


def _default_tokenizer_mode() -> None:
    """`tokenizer_mode="auto"` resolves to `desta` for DeSTA checkpoints (vLLM hard-codes this choice for its
    in-tree models in `ModelConfig.__post_init__`; an out-of-tree model can only wrap it)."""
    from vllm.config.model import ModelConfig

    original = ModelConfig.__post_init__
    if getattr(original, "_desta_wrapped", False):
        return

    def __post_init__(self, *args, **kwargs):
        refuse_release_format(self.model)
        original(self, *args, **kwargs)
        if self.tokenizer_mode == "auto" and getattr(self, "_architecture", None) == ARCHITECTURE:
            self.tokenizer_mode = MODE
            logger.info("Defaulting to tokenizer_mode=%r for %s", MODE, ARCHITECTURE)

    __post_init__._desta_wrapped = True
    ModelConfig.__post_init__ = __post_init__


def refuse_release_format(model: str) -> None:
    """The authors' release is a connector-only folder that names its LLM and Whisper by Hub id; vLLM loads one
    folder's weights, so it is converted once into a full checkpoint rather than assembled in every worker."""
    config = Path(str(model)) / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == RELEASE_MODEL_TYPE:
        raise ValueError(
            f"{model} is DeSTA2.5-Audio's release format (a connector naming its LLM and Whisper), which vLLM cannot "
            f"load as one folder: convert it once with `desta-audio convert --checkpoint {model} --output OUT_DIR`, then serve OUT_DIR."
        )
