"""Publishing a DeSTA checkpoint on the Hugging Face Hub: model card, folder checks, clean-process load, upload.

Not part of the remote-code set: nothing in a published folder imports this module, and neither does
`modeling_desta/__init__.py`.

One path, `publish()`, does everything in order: save (when given a model) -> render README.md (when given
facts) -> `check_folder` (static: config, code files and their imports, weights, processor, tokenizer, chat
template, generation config, card) -> `verify_loads` (a fresh interpreter that cannot import this project loads
the folder with the Auto classes and generates) -> `upload` (create_repo + upload_folder of exactly
`upload_file_list(folder)`).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2
import torch
import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from transformers import PreTrainedConfig

from processing.processing_desta import DEFAULT_SYSTEM_PROMPT

from .configuration_desta import DestaConfig
from .modeling_desta import DestaConnector

logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
DEFAULT_TAGS = ("audio", "speech", "audio-language-model", "desta", "whisper", "q-former", "custom_code")
DEFAULT_LANGUAGES = ("en",)
REQUIRED_FACTS = ("repo_id", "license", "datasets", "training", "evaluation")
REQUIRED_TRAINING_FACTS = ("steps", "loss")
REQUIRED_FRONT_MATTER = ("library_name", "pipeline_tag", "license", "base_model", "datasets", "tags")
# Leftovers that mean a template field was never filled (openers only: a closing "}}" is ordinary JSON).
PLACEHOLDER_PATTERN = re.compile(r"\{\{|\{%|\{#")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Packages of this project: remote code reaching for them works here and breaks for every Hub user.
PROJECT_PACKAGES = ("modeling_desta", "processing")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
UPLOAD_IGNORE_PATTERNS = ["__pycache__", "__pycache__/*", "*/__pycache__/*", "*.pyc", ".DS_Store", "*.lock"]
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


class PublishError(RuntimeError):
    """A folder is not fit for the Hub; the message lists every problem found."""


# ---------------------------------------------------------------------------------------------- model card
def render_model_card(config_or_model, facts: dict, template_path: str | os.PathLike | None = None) -> str:
    """The Hub README for a model: `model_card.md` filled from its config and a run's `facts`.

    `facts` keys: `repo_id`, `license`, `datasets` (list of Hub dataset ids), `training` (a mapping shown as the
    recipe table; `steps` and `loss` are required, any value a sentence such as "not published"),
    `evaluation` (`{"source": sentence, "results": [{"benchmark", "metric", "score"}, ...]}`); optional
    `base_models` (else the sub-configs' `_name_or_path`, which must then be Hub ids), `model_name`, `tags`,
    `languages`, `system_prompt`. Raises `ValueError` naming any missing field; nothing is left as a placeholder.
    """
    config = config_or_model if isinstance(config_or_model, PreTrainedConfig) else config_or_model.config
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


def _require_facts(facts: dict) -> None:
    missing = [key for key in REQUIRED_FACTS if not facts.get(key)]
    missing += [f"training.{key}" for key in REQUIRED_TRAINING_FACTS if facts.get("training", {}).get(key) in (None, "")]
    evaluation = facts.get("evaluation") or {}
    missing += [f"evaluation.{key}" for key in ("source", "results") if evaluation and not evaluation.get(key)]
    for index, row in enumerate(evaluation.get("results") or []):
        missing += [f"evaluation.results[{index}].{key}" for key in ("benchmark", "metric", "score") if row.get(key) in (None, "")]
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


# ---------------------------------------------------------------------------------------------- folder
def save_for_hub(model, folder: str | os.PathLike, processor=None, max_shard_size: str | int = "5GB") -> Path:
    """`save_pretrained` of the model (sharded safetensors and remote code) and of the processor, into `folder`."""
    folder = Path(folder)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def check_folder(folder: str | os.PathLike) -> None:
    """Static checks that a folder holds all that one-line remote-code use needs; raises listing every problem."""
    folder = Path(folder)
    problems = []
    config = _read_json(folder / "config.json", problems)
    if config is not None:
        problems += _config_problems(config, folder)
    problems += _code_problems(folder)
    problems += _weight_problems(folder)
    problems += _processor_problems(folder)
    if not (folder / "generation_config.json").exists():
        problems.append("generation_config.json is missing (save the model with save_pretrained).")
    problems += _card_problems(folder)
    if problems:
        raise PublishError(f"{folder} is not ready for the Hub:\n- " + "\n- ".join(problems))


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.exists():
        problems.append(f"{path.name} is missing.")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problems.append(f"{path.name} is not valid JSON: {error}")
        return None


def _config_problems(config: dict, folder: Path) -> list[str]:
    auto_map = config.get("auto_map") or {}
    problems = [f"config.json auto_map lacks {key}." for key in ("AutoConfig", "AutoModel") if key not in auto_map]
    for task, spec in (config.get("custom_pipelines") or {}).items():
        impl = spec.get("impl") if isinstance(spec, dict) else None
        if not impl:
            problems.append(f"config.json custom_pipelines[{task!r}] names no 'impl'.")
        else:
            problems += _module_file_problems(impl, folder, f"custom_pipelines[{task!r}]")
    return problems


def _auto_map_targets(auto_map: dict) -> list[str]:
    targets = []
    for value in auto_map.values():
        targets += [value] if isinstance(value, str) else [item for item in value or [] if item]
    return targets


def _module_file_problems(reference: str, folder: Path, where: str) -> list[str]:
    """`reference` is "module.Class" (optionally "repo--module.Class"); the module must be a file in the folder."""
    module = reference.split("--")[-1].rsplit(".", 1)[0]
    return [] if (folder / f"{module}.py").exists() else [f"{where} names {reference} but {module}.py is missing."]


def _code_problems(folder: Path) -> list[str]:
    """Every auto_map target file exists, and every .py imports only siblings that exist (flattened layout)."""
    problems = []
    for json_path in sorted(folder.glob("*.json")):
        try:
            auto_map = json.loads(json_path.read_text(encoding="utf-8")).get("auto_map")
        except (json.JSONDecodeError, AttributeError):
            continue
        for target in _auto_map_targets(auto_map or {}):
            problems += _module_file_problems(target, folder, f"{json_path.name} auto_map")
    for path in sorted(folder.glob("*.py")):
        problems += _import_problems(path)
    return problems


def _import_problems(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level > 1 or not node.module:
                dots = "." * node.level
                problems.append(f"{path.name}: 'from {dots}{node.module or ''} import ...' does not survive flattening; use 'from .module import Name'.")
            elif not (path.parent / f"{node.module.split('.')[0]}.py").exists():
                problems.append(f"{path.name} imports .{node.module} but {node.module.split('.')[0]}.py is missing.")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [
                f"{path.name} imports the project package {name!r}, which Hub users do not have."
                for name in names
                if name.split(".")[0] in PROJECT_PACKAGES
            ]
    return problems


def _weight_problems(folder: Path) -> list[str]:
    problems = [
        f"{path.relative_to(folder)} is a pickle; publish safetensors only."
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in PICKLE_SUFFIXES
    ]
    index_path = folder / SAFETENSORS_INDEX
    if index_path.exists():
        shards = set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values())
        problems += [f"{SAFETENSORS_INDEX} names {shard}, which is missing." for shard in sorted(shards) if not (folder / shard).exists()]
        strays = {path.name for path in folder.glob("*.safetensors")} - shards
        problems += [f"{name} is not in {SAFETENSORS_INDEX}." for name in sorted(strays)]
    elif not (folder / SAFETENSORS_SINGLE).exists():
        problems.append(f"No weights: neither {SAFETENSORS_SINGLE} nor {SAFETENSORS_INDEX}.")
    return problems


def _processor_problems(folder: Path) -> list[str]:
    problems = []
    processor_files = [folder / name for name in ("processor_config.json", "preprocessor_config.json")]
    processor_config = next((json.loads(path.read_text(encoding="utf-8")) for path in processor_files if path.exists()), None)
    if processor_config is None:
        problems.append("No processor_config.json / preprocessor_config.json (save the processor into the folder).")
    elif "AutoProcessor" not in (processor_config.get("auto_map") or {}):
        problems.append("The processor config's auto_map lacks AutoProcessor.")
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.exists():
        problems.append("tokenizer_config.json is missing.")
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model")):
        problems.append("No tokenizer.json / tokenizer.model.")
    if not _has_chat_template(folder, tokenizer_config, processor_config):
        problems.append("No chat template (chat_template.jinja, chat_template.json or a chat_template entry).")
    return problems


def _has_chat_template(folder: Path, tokenizer_config: Path, processor_config: dict | None) -> bool:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    if processor_config and processor_config.get("chat_template"):
        return True
    return tokenizer_config.exists() and bool(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template"))


def _card_problems(folder: Path) -> list[str]:
    readme = folder / "README.md"
    if not readme.exists():
        return ["README.md is missing (pass facts to publish() to render it)."]
    try:
        check_model_card(readme.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as error:
        return [f"README.md: {error}"]
    return []


# ---------------------------------------------------------------------------------------------- clean load
# Runs in a fresh interpreter whose cwd is an empty temp dir. The project may be pip-installed in this
# environment, so its packages are blocked outright: the folder must stand on its own remote code.
VERIFY_SCRIPT = r"""
import importlib.util, json, sys
project_on_path = {name: importlib.util.find_spec(name) is not None for name in sys.argv[3].split(",")}
for name in project_on_path:
    sys.modules[name] = None
import numpy as np
import torch
from transformers import AutoModel, AutoProcessor

folder, new_tokens = sys.argv[1], int(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
rate = 16000
tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype("float32")
conversation = [{"role": "user", "content": [
    {"type": "audio", "array": tone, "sampling_rate": rate, "transcript": "a tone"},
    {"type": "text", "text": "Describe the audio."},
]}]
inputs = processor.apply_chat_template(conversation)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
report = {
    "model_class": type(model).__name__,
    "model_module": type(model).__module__,
    "processor_class": type(processor).__name__,
    "new_tokens": int(output.shape[1] - inputs["input_ids"].shape[1]),
    "project_on_path": project_on_path,
}
if "audio-text-to-text" in (getattr(model.config, "custom_pipelines", None) or {}):
    from transformers import pipeline
    del model  # the one-line pipeline loads its own copy; never hold two (an 8B model is 16 GB in bf16)
    pipe = pipeline("audio-text-to-text", model=folder, trust_remote_code=True)
    answer = pipe(conversation, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    report["pipeline_class"] = type(pipe).__name__
    report["pipeline_answered"] = isinstance(answer, dict) and isinstance(answer.get("generated_text"), str)
print("VERIFY_REPORT " + json.dumps(report))
"""


def verify_loads(folder: str | os.PathLike, new_tokens: int = 3, timeout: float = 900) -> dict:
    """Load `folder` in a clean interpreter (project blocked, offline) with the Auto classes and generate.

    Returns the subprocess's report (classes, tokens generated, whether the project was on its path before
    being blocked). Raises `PublishError` with the subprocess's stderr tail when loading or generating fails.
    """
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="desta-verify-") as scratch:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"))
        command = [sys.executable, "-I", "-c", VERIFY_SCRIPT, str(folder), str(new_tokens), ",".join(PROJECT_PACKAGES)]
        logger.info("Loading %s in a clean interpreter", folder)
        result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("VERIFY_REPORT ")]
    if result.returncode != 0 or not lines:
        raise PublishError(f"{folder} does not load in a clean interpreter:\n{result.stderr[-4000:]}")
    report = json.loads(lines[-1].removeprefix("VERIFY_REPORT "))
    if report["new_tokens"] != new_tokens:
        raise PublishError(f"{folder} generated {report['new_tokens']} tokens in a clean interpreter, not {new_tokens}.")
    if report.get("pipeline_answered") is False:
        raise PublishError(f"The audio-text-to-text pipeline of {folder} gave no generated_text in a clean interpreter.")
    logger.info("Clean load of %s: %s", folder, report)
    return report


# ---------------------------------------------------------------------------------------------- upload
def upload_file_list(folder: str | os.PathLike) -> list[str]:
    """The exact relative paths `upload` sends: every file but VCS, Hub-cache and Python-cache litter."""
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return list(filter_repo_objects(files, ignore_patterns=[*UPLOAD_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))


def upload(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload DeSTA2.5-Audio checkpoint",
) -> list[str]:
    """Create the repo if needed and upload exactly `upload_file_list(folder)`; returns that list."""
    files = upload_file_list(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    logger.info("Uploading %d files to %s", len(files), repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files, commit_message=commit_message)
    return files


def publish(
    folder_or_model,
    repo_id: str,
    processor=None,
    facts: dict | None = None,
    max_shard_size: str | int = "5GB",
    work_dir: str | os.PathLike | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload DeSTA2.5-Audio checkpoint",
) -> list[str]:
    """Save (if given a model), render README.md (if given facts), check, load in a clean process, upload.

    `folder_or_model` is a folder written by `save_pretrained` (plus the processor) or a model, saved with
    `max_shard_size` into `work_dir` (a temp dir by default). `processor`, when given, is saved into the folder.
    `facts` feeds `render_model_card` (its `repo_id` defaults to `repo_id`); without it the folder must already
    hold a filled README.md. Returns the uploaded file list.
    """
    if isinstance(folder_or_model, (str, os.PathLike)):
        return _publish_folder(Path(folder_or_model), repo_id, processor, facts, private, token, commit_message)
    with tempfile.TemporaryDirectory(prefix="desta-publish-") as scratch:
        folder = save_for_hub(folder_or_model, Path(work_dir or scratch), processor, max_shard_size)
        return _publish_folder(folder, repo_id, None, facts, private, token, commit_message)


def _publish_folder(folder, repo_id, processor, facts, private, token, commit_message) -> list[str]:
    if processor is not None:
        processor.save_pretrained(folder)
    if facts is not None:
        config = DestaConfig.from_pretrained(folder)
        card = render_model_card(config, {"audio_token": _processor_audio_token(folder), **facts, "repo_id": repo_id})
        (folder / "README.md").write_text(card, encoding="utf-8")
    check_folder(folder)
    verify_loads(folder)
    return upload(folder, repo_id, private=private, token=token, commit_message=commit_message)


def _processor_audio_token(folder: Path) -> str | None:
    path = folder / "processor_config.json"
    return json.loads(path.read_text(encoding="utf-8")).get("audio_token") if path.exists() else None


__all__ = [
    "PublishError",
    "check_folder",
    "check_model_card",
    "publish",
    "render_model_card",
    "save_for_hub",
    "upload",
    "upload_file_list",
    "verify_loads",
]
