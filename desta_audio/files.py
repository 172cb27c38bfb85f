"""Files: JSONL appended a record at a time (a torn last line from a crash is skipped on reading); text, JSON and
JSONL written atomically (a temporary file, fsynced, then renamed); and text and JSONL input read with errors that
name the file, the line and the fix (not UTF-8, not JSON, not a record)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

UTF8_BOM = b"\xef\xbb\xbf"
# Byte-order marks of text that is not UTF-8 (UTF-32's first: its little-endian mark starts like UTF-16's).
WIDE_TEXT_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def read_text(path: str | os.PathLike) -> str:
    """A text input file (CSV, JSON, a prompt list) as a string: UTF-8, a byte-order mark allowed. Any other content
    (UTF-16 as some Windows tools save text, Latin-1, a binary file) is an error naming the file and the fix."""
    path = Path(path)
    data = path.read_bytes()
    check_not_wide_text(data, path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(not_utf8_message(path, line, data[error.start])) from None


def read_json(path: str | os.PathLike) -> Any:
    """The content of a JSON input file; not UTF-8 or not JSON is an error naming the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno} is not valid JSON ({json_error_text(error)}).") from None


def check_not_wide_text(data: bytes, path: Path) -> None:
    """Refuse UTF-16/UTF-32 text (`wide_text_encoding`), naming the file and how to convert it."""
    encoding = wide_text_encoding(data)
    if encoding is not None:
        converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
        raise ValueError(
            f"{path} is {encoding} text, not UTF-8; save it as UTF-8 (e.g. `iconv -f {encoding} -t UTF-8 {path} > "
            f"{converted}`) and pass that file."
        )


def wide_text_encoding(data: bytes) -> str | None:
    """The encoding of UTF-16 or UTF-32 text, told by its byte-order mark, or (UTF-16 without one) by NUL bytes at
    every other position of its start, as ASCII characters have them; None for anything else."""
    for mark, encoding in WIDE_TEXT_MARKS:
        if data.startswith(mark):
            return encoding
    head = data[:64]
    odd_nul, even_nul = not head[1::2].strip(b"\0"), not head[0::2].strip(b"\0")
    return "UTF-16" if len(head) >= 4 and odd_nul != even_nul else None


def not_utf8_message(path: Path, line: int, byte: int) -> str:
    return (
        f"{path} is not UTF-8 text: byte 0x{byte:02x} at line {line} is not UTF-8 (a binary file, or text in "
        "another encoding such as Latin-1?); save it as UTF-8 text and pass that file."
    )


def jsonl_records(path: str | os.PathLike, torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every record of a JSONL file; blank lines are skipped.

    A line that is not UTF-8, not JSON, or not a JSON object is an error naming the file and line. `torn_tail`,
    for files this package appends to (`JsonlWriter`): a last line cut short by a crash (no newline at its end, or
    not valid JSON) is skipped with a warning instead.
    """
    path = Path(path)
    data = path.read_bytes()
    check_not_wide_text(data, path)
    lines = data.removeprefix(UTF8_BOM).split(b"\n")
    if torn_tail:
        if lines[-1].strip():
            logger.warning(
                "%s: skipping a last line without its newline (%d bytes), an interrupted write", path, len(lines[-1])
            )
        lines = lines[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = parse_jsonl_line(line, path, number)
        except ValueError:
            if torn_tail and number == len(lines):
                logger.warning("%s: skipping a torn last line (%d bytes) left by an interrupted run", path, len(line))
                return
            raise
        yield number, record


def parse_jsonl_line(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(not_utf8_message(path, number, line[error.start])) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}:{number} is not valid JSON ({json_error_text(error)}); fix or remove that line."
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number} holds a JSON {type(record).__name__}, not a record object.")
    return record


def json_error_text(error: json.JSONDecodeError) -> str:
    """What is wrong and where on its line, as one phrase: "Invalid control character at column 14"."""
    return f"{error.msg.removesuffix(' at')} at column {error.colno}"


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record of a JSONL file written by `JsonlWriter`, a torn last line skipped (see `jsonl_records`)."""
    for _, record in jsonl_records(path, torn_tail=True):
        yield record


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a JSONL input file (data, metadata, prompts): any bad line, the last one too, is an error
    naming the file and line (see `jsonl_records`)."""
    return [record for _, record in jsonl_records(path)]


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
