"""The small real DeSTA checkpoint: SmolLM2-135M-Instruct and Whisper tiny.en joined by a fresh, seeded connector.

It is what `train_sft.py` writes before any training (model, processor and remote code in one folder), built
offline in a few seconds and cached. The connector is untrained, so audio answers mean nothing; text answers are
SmolLM2's own, which is what quantization and offloading checks compare.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import set_seed

from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor

from .cache import default_cache_dir, save_whole
from .smollm2 import cached_smollm2
from .whisper_tiny_en import cached_whisper_tiny_en

CACHE_SUBDIR = "desta-audio/small-desta"
SEED = 0
NUM_AUDIO_QUERIES = 16
CONNECTOR = {"qformer_num_hidden_layers": 2, "qformer_intermediate_size": 1024}


def build_small_desta(out_dir: str | os.PathLike) -> Path:
    """Write the small DeSTA checkpoint (float32) into `out_dir`; a finished `out_dir` is kept."""
    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        return out
    llm, whisper = cached_smollm2(), cached_whisper_tiny_en()
    set_seed(SEED)
    processor = DestaProcessor.from_components(llm, whisper, num_audio_queries=NUM_AUDIO_QUERIES)
    model = DestaForConditionalGeneration.from_components(llm, whisper, processor=processor, **CONNECTOR)
    return save_whole(out, model, processor)


def cached_small_desta(cache_dir: str | os.PathLike | None = None) -> Path:
    """The small DeSTA checkpoint built once under the user cache directory (about 10 s and 700 MB the first time)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return build_small_desta(root / CACHE_SUBDIR)
