"""Convert a checkpoint in the authors' release format into a self-contained checkpoint of this package.

The release (DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B) holds only the connector and names the LLM and Whisper it
belongs to. `DestaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` load it as it is
(`modeling_desta/release_desta.py` reads the format and maps every connector key strictly); this module runs
the same loading and writes model + processor (+ model card) into one folder that loads with
`trust_remote_code=True` alone, for a Hub copy that needs nothing fetched from elsewhere:

    desta-audio convert --checkpoint DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B --output out/ \\
        [--push-to-hub you/DeSTA2.5-Audio-Llama-3.1-8B] [--dtype bfloat16] [--facts facts.yaml]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from modeling_desta import DestaConfig, DestaForConditionalGeneration
from modeling_desta.release_desta import RELEASE_REPO_ID, RELEASE_WEIGHTS, ReleaseFormatError, read_config_dict
from processing import DestaProcessor

from .card import check_fact_types, render_model_card

logger = logging.getLogger(__name__)

# Weights files that are pickles (`torch.save`), which are never loaded: unpickling can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Model-card facts of the release: its recipe (paper, arXiv 2507.02768, training set-up) and the authors' published numbers (1.4).
RELEASE_FACTS = {
    "model_name": "DeSTA2.5-Audio-Llama-3.1-8B",
    "license": "llama3.1",
    "datasets": ["DeSTA-ntu/DeSTA-AQA5M-FROM-Llama3.1-8B-Instruct"],
    "training": {
        "steps": "5 epochs at 96 samples per step (about 258.5 k steps over the 4,963,845 rows)",
        "loss": "not published",
        "trained_parameters": "connector only (queries, layer weights, Q-Former, projection); LoRA off",
        "optimizer": "AdamW, lr 1e-4, betas (0.9, 0.98), weight decay 0.01",
        "schedule": "cosine with 5000 warm-up steps",
        "gradient_clipping": "1.0",
        "precision": "bf16 mixed",
        "batch": "12 per GPU x 8 GPUs, at most 300 tokens",
    },
    "evaluation": {
        "source": (
            "Numbers published by the authors for this release (arXiv 2507.02768; greedy decoding; MMAU scored "
            "by string match after stripping the answer prefix). They were not re-measured after conversion."
        ),
        "results": [
            {"benchmark": "MMAU v05.15.25 test-mini, sound", "metric": "accuracy (%)", "score": "70.57"},
            {"benchmark": "MMAU v05.15.25 test-mini, speech", "metric": "accuracy (%)", "score": "71.17"},
            {"benchmark": "MMAU v05.15.25 test-mini, music", "metric": "accuracy (%)", "score": "56.29"},
            {"benchmark": "MMAU v05.15.25 test-mini, average", "metric": "accuracy (%)", "score": "66.00"},
            {"benchmark": "Dynamic-SUPERB phase 1", "metric": "accuracy (%)", "score": "69.53"},
            {"benchmark": "SAKURA multi-hop", "metric": "accuracy (%)", "score": "69.85"},
            {"benchmark": "Speech-IFEval", "metric": "IFrate (%)", "score": "93.89"},
            {"benchmark": "MMAR", "metric": "accuracy (%)", "score": "50.8"},
        ],
    },
}


def check_convertible(checkpoint: str | os.PathLike, **fetch_kwargs) -> None:
    """Refuse, before anything is loaded, what is not the release format for a reason the loader would not name: a
    checkpoint of this package (nothing to convert), or a local release whose weights are a pickle."""
    config = read_config_dict(checkpoint, **fetch_kwargs) or {}
    if config.get("model_type") == DestaConfig.model_type:
        raise ValueError(
            f"{checkpoint} is already a DeSTA checkpoint (model_type {DestaConfig.model_type!r}), not the authors' "
            f"release format: it needs no conversion. Load it with AutoModel.from_pretrained('{checkpoint}', "
            "trust_remote_code=True), or upload it with desta_audio.hub.publish."
        )
    folder = Path(checkpoint)
    if not folder.is_dir() or (folder / RELEASE_WEIGHTS).exists():
        return
    pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        source = folder / pickles[0]
        raise ReleaseFormatError(
            f"{checkpoint} holds its weights as a pickle ({', '.join(pickles)}); only safetensors weights are read, "
            'as loading a pickle can run code. If you trust the file, convert it once: python -c "import torch; '
            f"from safetensors.torch import save_file; save_file(torch.load('{source}', weights_only=True), "
            f"'{folder / RELEASE_WEIGHTS}')\", then run convert again."
        )


def convert(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str | int = "5GB",
    facts: dict | None = None,
    repo_id: str | None = None,
    **fetch_kwargs,
) -> Path:
    """Convert `checkpoint` (Hub id or folder in the release format) into `output`; returns `output`.

    README.md is written when there are card facts: `facts`, or the release's own when converting the release.
    `repo_id` is where the card's usage snippets point (default: `output`). `fetch_kwargs` (`revision`, `token`,
    `cache_dir`, ...) go to the loading, as for `from_pretrained`.
    """
    if facts is not None:
        check_fact_types(facts)
    check_convertible(checkpoint, **fetch_kwargs)
    processor = DestaProcessor.from_release(checkpoint, **fetch_kwargs)
    model = DestaForConditionalGeneration.from_release(checkpoint, dtype=dtype, **fetch_kwargs)

    output = Path(output)
    model.save_pretrained(output, max_shard_size=max_shard_size)
    processor.save_pretrained(output)
    card_facts = facts if facts is not None else (RELEASE_FACTS if str(checkpoint) == RELEASE_REPO_ID else None)
    if card_facts is None:
        logger.warning("No model-card facts for %s: README.md not written (pass facts to write it).", checkpoint)
    else:
        card = render_model_card(
            model, {"audio_token": processor.audio_token, **card_facts, "repo_id": repo_id or str(output)}
        )
        (output / "README.md").write_text(card, encoding="utf-8")
    logger.info("Wrote %s (taps %s, %s)", output, model.config.audio_layer_ids, model.dtype)
    return output
