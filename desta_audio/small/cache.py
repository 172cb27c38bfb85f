"""Where the small real parts are built, and how a built folder appears: whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    """`$DESTA_AUDIO_CACHE`, else `$XDG_CACHE_HOME`, else `~/.cache`."""
    if os.environ.get("DESTA_AUDIO_CACHE"):
        return Path(os.environ["DESTA_AUDIO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def save_whole(out: Path, *parts) -> Path:
    """`save_pretrained` every part into a staging folder beside `out`, then rename it to `out`.

    A finished folder appears whole, even with several builders at once; one that exists without
    `model.safetensors` (left by something else) is an error naming the fix.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        for part in parts:
            part.save_pretrained(staging)
        if not out.exists():
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (out / "model.safetensors").exists():
        raise RuntimeError(f"{out} exists but holds no model.safetensors; remove it and build again")
    return out
