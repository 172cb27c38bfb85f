"""Model cards: the one renderer of every card this project writes (publishing, conversion, training runs).

`model_card.md` at the repository root is the Jinja template; `render_model_card` fills it from a config and a
run's facts and refuses to leave a placeholder; `write_model_card` is what training runs call, falling back to a
minimal card when a run cannot name Hub ids for its base models and data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import torch
import yaml
from transformers import PreTrainedConfig

from modeling_desta import DestaConfig, DestaConnector
from processing import DEFAULT_SYSTEM_PROMPT

logger = logging.getLogger(__name__)

# The repository root's model_card.md is the source; `desta_audio/hub/model_card.md` links to it and the wheel
# carries a copy (package data), so installed and editable installs find the same template.
MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
DEFAULT_TAGS = ("audio", "speech", "audio-language-model", "desta", "whisper", "q-former", "custom_code")
DEFAULT_LANGUAGES = ("en",)
REQUIRED_FACTS = ("repo_id", "license", "datasets", "training", "evaluation")
REQUIRED_TRAINING_FACTS = ("steps", "loss")
# The type of every fact `render_model_card` reads ("list of strings": a bare string would become one entry per letter).
FACT_TYPES = {
    "repo_id": "string",
    "license": "string",
    "model_name": "string",
    "system_prompt": "string",
    "audio_token": "string",
    "datasets": "list of strings",
    "base_models": "list of strings",
    "languages": "list of strings",
    "tags": "list of strings",
    "training": "mapping",
    "evaluation": "mapping",
}
EVALUATION_SHAPE = "{'source': ..., 'results': [{'benchmark': ..., 'metric': ..., 'score': ...}, ...]}"
REQUIRED_FRONT_MATTER = ("library_name", "pipeline_tag", "license", "base_model", "datasets", "tags")
# Leftovers that mean a template field was never filled (openers only: a closing "}}" is ordinary JSON).
PLACEHOLDER_PATTERN = re.compile(r"\{\{|\{%|\{#")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def render_model_card(config_or_model, facts: dict, template_path: str | os.PathLike | None = None) -> str:
    """The Hub README for a model: `model_card.md` filled from its config and a run's `facts`.

    `facts` keys: `repo_id`, `license`, `datasets` (list of Hub dataset ids), `training` (a mapping shown as the
    recipe table; `steps` and `loss` are required, any value a sentence such as "not published"),
    `evaluation` (`{"source": sentence, "results": [{"benchmark", "metric", "score"}, ...]}`); optional
    `base_models` (else the sub-configs' `_name_or_path`, which must then be Hub ids), `model_name`, `tags`,
    `languages`, `system_prompt`. Raises `ValueError` naming any missing field; nothing is left as a placeholder.
    """
    config = config_or_model if isinstance(config_or_model, PreTrainedConfig) else config_or_model.config
    check_fact_types(facts)
    _require_facts(facts)
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    environment.filters["yaml"] = _yaml_scalar
    environment.filters["cell"] = _table_cell
    template_path = Path(template_path or MODEL_CARD_TEMPLATE)
    if not template_path.exists():
        raise FileNotFoundError(f"Model card template {template_path} is missing.")
    card = environment.from_string(template_path.read_text(encoding="utf-8")).render(**card_fields(config, facts))
    check_model_card(card)
    return card


def card_fields(config: DestaConfig, facts: dict) -> dict:
    """Every template field, from the config (architecture, base models) and the facts (everything else)."""
    text_config, audio_config = config.text_config, config.audio_config
    base_models = list(facts.get("base_models") or _base_models_from_config(config))
    if len(base_models) != 2:
        raise ValueError(f"base_models must be [LLM id, Whisper id], got {base_models}.")
    evaluation = facts["evaluation"]
    return {
        "repo_id": facts["repo_id"],
        "model_name": facts.get("model_name") or facts["repo_id"].split("/")[-1],
        "license": facts["license"],
        "base_models": base_models,
        "datasets": list(facts["datasets"]),
        "languages": list(facts.get("languages") or DEFAULT_LANGUAGES),
        "tags": _unique([*DEFAULT_TAGS, *(facts.get("tags") or [])]),
        "llm_name": base_models[0],
        "whisper_name": base_models[1],
        "llm_link": _hub_link(base_models[0]),
        "whisper_link": _hub_link(base_models[1]),
        "encoder_layers": audio_config.encoder_layers,
        "encoder_width": audio_config.d_model,
        "audio_layer_ids": list(config.audio_layer_ids),
        "num_audio_queries": config.num_audio_queries,
        "qformer_layers": config.qformer_num_hidden_layers,
        "qformer_heads": config.qformer_num_attention_heads,
        "qformer_ffn": config.qformer_intermediate_size,
        "llm_layers": text_config.num_hidden_layers,
        "llm_width": text_config.hidden_size,
        "connector_parameters": _human_count(connector_parameter_count(config)),
        "audio_token": f"`{facts['audio_token']}`" if facts.get("audio_token") else f"token id {config.audio_token_id}",
        "audio_start_text": config.audio_start_text,
        "audio_end_text": config.audio_end_text,
        "system_prompt": facts.get("system_prompt") or DEFAULT_SYSTEM_PROMPT,
        "training": [(name.replace("_", " "), value) for name, value in facts["training"].items()],
        "evaluation_source": evaluation["source"],
        "evaluation_results": list(evaluation["results"]),
    }


def check_model_card(card: str) -> dict:
    """Parse the card's YAML front matter and refuse unfilled fields; returns the front matter."""
    leftover = PLACEHOLDER_PATTERN.search(card)
    if leftover:
        line = card[: leftover.start()].count("\n") + 1
        raise ValueError(f"The model card still holds a template placeholder {leftover.group()!r} on line {line}.")
    match = re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL)
    if not match:
        raise ValueError("The model card has no YAML front matter between '---' lines.")
    metadata = yaml.safe_load(match.group(1))
    if not isinstance(metadata, dict):
        raise ValueError("The model card's front matter is not a YAML mapping.")
    missing = [key for key in REQUIRED_FRONT_MATTER if not metadata.get(key)]
    if missing:
        raise ValueError(f"The model card's front matter lacks {missing}.")
    return metadata


def connector_parameter_count(config: DestaConfig) -> int:
    """Parameters of the connector (the only trained part), counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        connector = DestaConnector(config)
    return sum(parameter.numel() for parameter in connector.parameters())


def check_fact_types(facts) -> None:
    """Refuse card facts of the wrong type, naming the field and the type it needs: a YAML slip such as
    `evaluation: 70.1 on MMAU` would otherwise end deep in rendering, naming neither."""
    if not isinstance(facts, dict):
        raise ValueError(f"The model card facts must be a mapping of fields; got {_kind(facts)}.")
    for key, kind in FACT_TYPES.items():
        if facts.get(key) is not None and not _has_type(facts[key], kind):
            shape = f" ({EVALUATION_SHAPE})" if key == "evaluation" else ""
            raise ValueError(f"facts[{key!r}] must be a {kind}{shape}; got {_kind(facts[key])}.")
    results = (facts.get("evaluation") or {}).get("results")
    if results is not None and not _has_type(results, "list of mappings"):
        raise ValueError(
            f"facts['evaluation']['results'] must be a list of mappings ({{'benchmark': ..., 'metric': ..., "
            f"'score': ...}}); got {_kind(results)}."
        )


def _has_type(value, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "mapping":
        return isinstance(value, dict)
    element = str if kind == "list of strings" else dict
    return isinstance(value, list) and all(isinstance(item, element) for item in value)


def _kind(value) -> str:
    """What a value is, for an error: its type and a short excerpt."""
    text = repr(value)
    return f"a {type(value).__name__} ({text[:60] + '...' if len(text) > 60 else text})"


def _require_facts(facts: dict) -> None:
    missing = [key for key in REQUIRED_FACTS if not facts.get(key)]
    missing += [
        f"training.{key}" for key in REQUIRED_TRAINING_FACTS if facts.get("training", {}).get(key) in (None, "")
    ]
    evaluation = facts.get("evaluation") or {}
    missing += [f"evaluation.{key}" for key in ("source", "results") if evaluation and not evaluation.get(key)]
    for index, row in enumerate(evaluation.get("results") or []):
        missing += [
            f"evaluation.results[{index}].{key}"
            for key in ("benchmark", "metric", "score")
            if row.get(key) in (None, "")
        ]
    if missing:
        raise ValueError(f"The model card needs these facts: {', '.join(missing)}.")


def _base_models_from_config(config: DestaConfig) -> list[str]:
    """[LLM id, Whisper id] from the sub-configs' `_name_or_path`; local paths cannot name a Hub base model."""
    names = [config.text_config._name_or_path, config.audio_config._name_or_path]
    unusable = [name for name in names if not is_hub_id(name)]
    if unusable:
        raise ValueError(
            f"The config names its base models {names}, and {unusable} are not Hub ids; pass facts['base_models'] "
            "as [LLM id, Whisper id]."
        )
    return names


def is_hub_id(name: str | None) -> bool:
    return bool(name) and bool(HUB_ID_PATTERN.match(str(name))) and not Path(str(name)).exists()


def _hub_link(name: str) -> str:
    return f"[{name}](https://huggingface.co/{name})"


def _yaml_scalar(value) -> str:
    """A value as a YAML flow scalar; JSON's quoting is valid YAML and never breaks the front matter."""
    return json.dumps(value, ensure_ascii=False)


def _table_cell(value) -> str:
    """A value inside a Markdown table row: a bare "|" (as in `<|eot_id|>`) would split the cell."""
    return str(value).replace("|", "\\|")


def _human_count(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


def _unique(items) -> list:
    return list(dict.fromkeys(items))


# training runs: the full card when the run's facts fill it, else a minimal one
def write_model_card(output_dir: str | os.PathLike, config, info: dict[str, Any]) -> Path:
    """README.md: the project's full card (`render_model_card`) when the run can fill it
    (Hub ids for both base models and the data), else a minimal card with this run's facts."""
    try:
        card = full_model_card(config, info)
    except (ValueError, FileNotFoundError, ImportError) as error:
        logger.info("writing a minimal model card: %s", error)
        card = minimal_model_card(info)
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card, encoding="utf-8")
    return path


def full_model_card(config, info: dict[str, Any]) -> str:
    dataset = info.get("dataset")
    facts = {
        "repo_id": info.get("repo_id"),
        "license": info.get("license"),
        "datasets": [dataset] if is_hub_id(dataset) else [],
        "training": training_facts(info),
        "evaluation": {
            "source": "No benchmark has been run on this checkpoint yet (see `desta-audio eval`); the only number "
            "below is this training run's last logged loss.",
            "results": [
                {
                    "benchmark": "training data",
                    "metric": "cross-entropy loss (last log)",
                    "score": _fmt(info.get("final_loss")),
                }
            ],
        },
        "audio_token": info.get("audio_token"),
    }
    if info.get("llm") and info.get("whisper"):
        facts["base_models"] = [info["llm"], info["whisper"]]
    return render_model_card(config, facts)


def training_facts(info: dict[str, Any]) -> dict[str, Any]:
    facts = {
        "trained": "connector + LoRA on the LLM (merged)"
        if info.get("lora")
        else "connector only (Whisper and LLM frozen)",
        "started from": info.get("base_model") or "components (fresh connector)",
        "data": info.get("dataset"),
        "steps": info.get("global_step"),
        "epochs": _fmt(info.get("epoch")),
        "loss": _fmt(info.get("final_loss")),
        "learning rate": info.get("learning_rate"),
    }
    return {name: value for name, value in facts.items() if value not in (None, "")}


def minimal_model_card(info: dict[str, Any]) -> str:
    base_models = [
        m for m in (info.get("base_model"), info.get("llm"), info.get("whisper")) if m and not os.path.isdir(m)
    ]
    front_matter = [
        "---",
        "library_name: transformers",
        "pipeline_tag: audio-text-to-text",
        "tags:",
        "- desta",
        "- audio",
        "- trl",
        "- sft",
    ]
    if base_models:
        front_matter += ["base_model:", *(f"- {m}" for m in base_models)]
    front_matter.append("---")
    rows = [
        f"| {name} | {value} |"
        for name, value in {"LLM": info.get("llm"), "Whisper": info.get("whisper"), **training_facts(info)}.items()
        if value
    ]
    repo = info.get("repo_id") or "path/to/this/folder"
    body = [
        "",
        "# DeSTA2.5-Audio fine-tune",
        "",
        (
            "A DeSTA2.5-Audio model (Whisper encoder + Q-Former connector + LLM) fine-tuned with `train_sft.py` "
            "(TRL `SFTTrainer`) on self-generated audio instruction data."
        ),
        "",
        "| | |",
        "| --- | --- |",
        *rows,
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModel, AutoProcessor",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)',
        "```",
        "",
    ]
    return "\n".join(front_matter + body)


def _fmt(value) -> str | None:
    return None if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
