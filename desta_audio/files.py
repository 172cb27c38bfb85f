"""Crash-safe files: JSONL appended a record at a time (a torn last line from a crash is skipped on reading) and
text, JSON and JSONL written atomically (a temporary file, fsynced, then renamed)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record of a JSONL file written by `JsonlWriter`.

    A torn last line (a write cut short by a crash: no newline at its end, or not valid JSON) is skipped with a
    warning; a bad line anywhere else is an error naming the file and line.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    if lines[-1].strip():
        logger.warning(
            "%s: skipping a last line without its newline (%d bytes), an interrupted write", path, len(lines[-1])
        )
    lines = lines[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: skipping a torn last line (%d bytes) left by an interrupted run", path, len(line))
                return
            raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}); fix or remove that line.") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number} holds a JSON {type(record).__name__}, not a record object.")
        yield record


def cut_torn_tail(path: str | os.PathLike) -> None:
    """Truncate a partial last line so that the next append starts on a fresh line."""
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position != end:
            logger.warning(
                "%s: dropping a partial last line (%d bytes) left by an interrupted run", path, end - position
            )
            handle.truncate(position)


class JsonlWriter:
    """Appends whole batches of records to a JSONL file: one write, flush and fsync per batch.

    A torn last line left by an earlier crash is cut first, so appends never glue onto it.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            cut_torn_tail(path)
        self.path = path
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        self.handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`: readers never see half
    a file, and a crash leaves the old one whole."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite a JSONL file whole (see `write_text_atomic`)."""
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
