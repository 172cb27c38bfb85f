"""Checkpoints of a run: what `--resume_from_checkpoint` resumes from (only complete, readable checkpoints), and
an output folder that would be overwritten."""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)


def resume_target(value: str | bool | None, output_dir: str | os.PathLike | None = None) -> str | bool | None:
    """`--resume_from_checkpoint true` means the latest *complete* checkpoint in --output_dir (the parser yields a
    string); a checkpoint cut short by a crash (no trainer state yet, or no weights) is skipped with a warning."""
    if isinstance(value, str) and value.lower() in ("false", "none", ""):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last", "latest")):
        return True if output_dir is None else latest_complete_checkpoint(output_dir)
    if value and (problem := checkpoint_problem(value)):
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint ({problem}); name an earlier checkpoint-N, "
            "or pass --resume_from_checkpoint true for the latest complete one."
        )
    return value


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    return checkpoint_problem(folder) is None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is no complete checkpoint, or None: the Trainer writes the trainer state last, so with it
    (readable) and weights, the save finished."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {TRAINER_STATE_NAME}"
    if not (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        return "no weights"
    return None


def check_checkpoint_files(checkpoint: str | os.PathLike | bool | None) -> None:
    """Refuse to resume from a checkpoint with a file cut short after the save (a full disk, a stopped copy): it
    is caught from its header or zip directory, without reading the weights, and named in one line."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return
    broken = [path.name for path in sorted(Path(checkpoint).iterdir()) if not _readable_checkpoint_file(path)]
    if broken:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: {', '.join(broken)} truncated or corrupt; name an earlier "
            "checkpoint-N, or move this one away and pass --resume_from_checkpoint true."
        )


def _readable_checkpoint_file(path: Path) -> bool:
    """safetensors: the header reads and covers the file; torch files (.pt, .pth, .bin): a whole zip archive."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt"):
                return True
        except (SafetensorError, OSError):
            return False
    if path.suffix in (".pt", ".pth", ".bin"):
        return zipfile.is_zipfile(path)
    return True


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = [
        (int(m.group(1)), p)
        for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if (m := pattern.match(p.name))
    ]
    return [path for _, path in sorted(found, reverse=True) if path.is_dir()]


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str:
    for folder in checkpoint_dirs(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("skipping %s: an incomplete checkpoint (%s; interrupted while saving?)", folder, problem)
    raise ValueError(f"--resume_from_checkpoint: no complete checkpoint in {output_dir}.")


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, overwrite: bool) -> None:
    """Refuse to train a fresh run into a folder that already holds a model or checkpoints (they would be
    overwritten or mixed), unless resuming or `--overwrite_output_dir`."""
    folder = Path(output_dir)
    if resuming or not folder.is_dir():
        return
    held = [
        name for name in ("config.json", "model.safetensors", "adapter_model.safetensors") if (folder / name).exists()
    ]
    held += [path.name for path in checkpoint_dirs(folder)][:3]
    if not held:
        return
    if not overwrite:
        raise ValueError(
            f"--output_dir {folder} already holds a model ({', '.join(held)}). Pass --overwrite_output_dir to replace "
            "it, --resume_from_checkpoint true to continue it, or choose another folder."
        )
    logger.warning("--overwrite_output_dir: training over the model in %s", folder)
