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
import contextlib
import fnmatch
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import HfApi

from modeling_desta import DestaConfig

from .card import check_fact_types, check_model_card, render_model_card

logger = logging.getLogger(__name__)

# Packages of this project: remote code reaching for them works here and breaks for every Hub user.
PROJECT_PACKAGES = ("modeling_desta", "processing", "desta_audio")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
# What a checkpoint folder is made of, by name: anything else (credentials.json, notes.txt, logs/, wandb/,
# checkpoint-*/, a stray .env) is never uploaded. Top-level files, then the known sub-folders and their files.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "tokenizer.model",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
)
CHECKPOINT_FILES = (
    "README.md",
    "config.json",
    "generation_config.json",
    SAFETENSORS_SINGLE,
    SAFETENSORS_INDEX,
    "model-[0-9]*-of-[0-9]*.safetensors",
    "processor_config.json",
    "preprocessor_config.json",
    "*.py",
    *TOKENIZER_FILES,
)
CHECKPOINT_SUBFOLDERS = {
    "asr_tokenizer": TOKENIZER_FILES,
    "additional_chat_templates": ("*.jinja",),
    "lora_adapter": ("adapter_config.json", "adapter_model.safetensors", "README.md"),
}


class PublishError(RuntimeError):
    """A folder is not fit for the Hub; the message lists every problem found."""


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
                problems.append(
                    f"{path.name}: 'from {dots}{node.module or ''} import ...' does not survive flattening; use 'from .module import Name'."
                )
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
        shards, index_problems = _index_shards(index_path)
        if index_problems:
            return problems + index_problems
        problems += [
            f"{SAFETENSORS_INDEX} names {shard}, which is missing."
            for shard in sorted(shards)
            if not (folder / shard).exists()
        ]
        strays = {path.name for path in folder.glob("*.safetensors")} - shards
        problems += [f"{name} is not in {SAFETENSORS_INDEX}." for name in sorted(strays)]
    elif not (folder / SAFETENSORS_SINGLE).exists():
        problems.append(f"No weights: neither {SAFETENSORS_SINGLE} nor {SAFETENSORS_INDEX}.")
    return problems


def _index_shards(index_path: Path) -> tuple[set[str], list[str]]:
    """The shard files a safetensors index names, or the problems that make it unreadable: no `weight_map`, or a
    shard that is not a plain `.safetensors` file name beside the index (`../outside.safetensors`)."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return set(), [f"{SAFETENSORS_INDEX} is not valid JSON ({error})."]
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return set(), [f"{SAFETENSORS_INDEX} has no weight_map (save the model with save_pretrained)."]
    shards = {str(shard) for shard in weight_map.values()}
    bad = sorted(shard for shard in shards if Path(shard).name != shard or not shard.endswith(".safetensors"))
    return shards, [f"{SAFETENSORS_INDEX} names {shard!r}, not a shard file beside it." for shard in bad]


def _processor_problems(folder: Path) -> list[str]:
    problems = []
    processor_files = [folder / name for name in ("processor_config.json", "preprocessor_config.json")]
    processor_config = next(
        (json.loads(path.read_text(encoding="utf-8")) for path in processor_files if path.exists()), None
    )
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
    return tokenizer_config.exists() and bool(
        json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template")
    )


def _card_problems(folder: Path) -> list[str]:
    readme = folder / "README.md"
    if not readme.exists():
        return ["README.md is missing (pass facts to publish() to render it)."]
    try:
        check_model_card(readme.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as error:
        return [f"README.md: {error}"]
    return []


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
inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
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
        raise PublishError(
            f"{folder} generated {report['new_tokens']} tokens in a clean interpreter, not {new_tokens}."
        )
    if report.get("pipeline_answered") is False:
        raise PublishError(
            f"The audio-text-to-text pipeline of {folder} gave no generated_text in a clean interpreter."
        )
    logger.info("Clean load of %s: %s", folder, report)
    return report


def upload_file_list(folder: str | os.PathLike) -> list[str]:
    """The exact relative paths `upload` sends: the checkpoint files by name (`CHECKPOINT_FILES`, and the files of
    `CHECKPOINT_SUBFOLDERS`), nothing else. A file that is a link resolving outside the folder is an error: its
    target would be uploaded."""
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    kept = [name for name in files if _is_checkpoint_file(name)]
    _refuse_links_outside(folder, kept)
    left_out = sorted(set(files) - set(kept))
    if left_out:
        logger.warning(
            "Not uploading %d file(s) that are not checkpoint files: %s", len(left_out), ", ".join(left_out[:10])
        )
    return kept


def _is_checkpoint_file(name: str) -> bool:
    parts = name.split("/")
    if len(parts) == 1:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in CHECKPOINT_FILES)
    patterns = CHECKPOINT_SUBFOLDERS.get(parts[0]) if len(parts) == 2 else None
    return patterns is not None and any(fnmatch.fnmatchcase(parts[1], pattern) for pattern in patterns)


def _refuse_links_outside(folder: Path, names: list[str]) -> None:
    root = os.path.realpath(folder)
    outside = [name for name in names if os.path.commonpath([root, os.path.realpath(folder / name)]) != root]
    if outside:
        raise PublishError(
            f"{folder}: {', '.join(outside)} link(s) to files outside the folder; their targets would be uploaded. "
            "Copy the files in, or remove the links."
        )


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
    if facts is not None:
        check_fact_types(facts)
    upload_options = {"private": private, "token": token, "commit_message": commit_message}
    if isinstance(folder_or_model, (str, os.PathLike)):
        folder = Path(folder_or_model)
        if processor is None and (facts is None or (folder / "README.md").exists()):
            _warn_if_card_kept(folder, facts)
            return _check_and_upload(folder, repo_id, upload_options)
        with _staged_copy(folder) as stage:  # the user's folder is never written to
            _add_processor_and_card(stage, repo_id, processor, facts)
            return _check_and_upload(stage, repo_id, upload_options)
    with tempfile.TemporaryDirectory(prefix="desta-publish-") as scratch:
        folder = save_for_hub(folder_or_model, Path(work_dir or scratch), processor, max_shard_size)
        _add_processor_and_card(folder, repo_id, None, facts)
        return _check_and_upload(folder, repo_id, upload_options)


def _warn_if_card_kept(folder: Path, facts: dict | None) -> None:
    if facts is not None:
        logger.warning("%s already has a README.md: uploading it as it is; the facts given are not used", folder)


def _add_processor_and_card(folder: Path, repo_id: str, processor, facts: dict | None) -> None:
    """Save the processor and render README.md (only where the folder has none) as new files replacing links."""
    if processor is not None:
        with tempfile.TemporaryDirectory(dir=folder.parent) as saved:
            processor.save_pretrained(saved)
            for path in Path(saved).rglob("*"):
                if path.is_file():
                    target = folder / path.relative_to(saved)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
    if facts is not None and not (folder / "README.md").exists():
        config = DestaConfig.from_pretrained(folder)
        card = render_model_card(config, {"audio_token": _processor_audio_token(folder), **facts, "repo_id": repo_id})
        (folder / "README.md").write_text(card, encoding="utf-8")
    else:
        _warn_if_card_kept(folder, facts)


@contextlib.contextmanager
def _staged_copy(folder: Path):
    """A scratch copy of a folder's uploadable files (hard links where possible, so weights are not copied)."""
    try:
        scratch = tempfile.TemporaryDirectory(dir=folder.parent, prefix=".desta-publish-")
    except OSError:
        scratch = tempfile.TemporaryDirectory(prefix="desta-publish-")
    with scratch:
        stage = Path(scratch.name) / folder.name
        for name in upload_file_list(folder):
            target = stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(folder / name, target)
            except OSError:
                shutil.copy2(folder / name, target)
        yield stage


def _check_and_upload(folder: Path, repo_id: str, upload_options: dict) -> list[str]:
    check_folder(folder)
    verify_loads(folder)
    return upload(folder, repo_id, **upload_options)


def _processor_audio_token(folder: Path) -> str | None:
    path = folder / "processor_config.json"
    return json.loads(path.read_text(encoding="utf-8")).get("audio_token") if path.exists() else None
