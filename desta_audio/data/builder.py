"""The build loop of the DeSTA recipe: for every clip a seed description is built from its metadata, an
instruction is drawn from a pool, and the backbone LLM answers the instruction from the description alone. The
answer becomes the training target for the real audio, so targets stay in the LLM's own voice.

Output records follow DeSTA-AQA5M (`id`, `dataset`, `seed_description`, `prompt`, `response`, `messages`) plus
`audio` (an absolute path, typed `datasets.Audio` at the merge; see `store`) and `transcript`, appended batch by batch to one JSONL shard per process (see `store`), so a rerun
resumes by id. `build_dataset.py` at the repository root is the command-line front end.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..files import JsonlWriter, write_json_atomic
from ..runtime import chunks
from .descriptions import generation_messages, pick_instruction, row_random
from .engines import ResponseGenerator, WhisperTranscriber
from .engines_openai import RejectedAnswer
from .sources import BadRow, PreparedRow, SourceColumns, check_columns, make_record, prepare_row
from .store import (
    LayoutLock,
    ShardLock,
    check_build_settings,
    finished_ids,
    shard_file,
    stored_clip,
    summary_file,
)

logger = logging.getLogger(__name__)

MAX_SKIPPED_EXAMPLES = 1000


@dataclass
class BuildSummary:
    source_rows: int
    shard_rows: int = 0
    already_done: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0

    def skip(self, index: int, row_id: str | None, error: BadRow) -> None:
        self.skipped[error.reason] += 1
        if len(self.skipped_rows) < MAX_SKIPPED_EXAMPLES:
            self.skipped_rows.append({"index": index, "id": row_id, "reason": error.reason, "detail": str(error)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_rows": self.source_rows,
            "shard_rows": self.shard_rows,
            "already_done": self.already_done,
            "written": self.written,
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(self.skipped),
            "skipped_rows": self.skipped_rows,
            "interrupted": self.interrupted,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.written / self.elapsed_s, 3) if self.elapsed_s else None,
        }


@dataclass
class BuildOptions:
    output_dir: Path
    instructions: Sequence[str]
    seed: int = 0
    batch_size: int = 8
    num_shards: int = 1
    shard_index: int = 0
    require_transcript: bool = False
    progress: bool = True
    settings: dict[str, Any] | None = None  # what shapes the records; checked against the folder's, see store
    force: bool = False


def duplicate_indices(ids: Sequence[str | None]) -> set[int]:
    """Indices whose id appeared earlier in the source: the first occurrence wins whatever the sharding."""
    seen: set[str] = set()
    duplicates = set()
    for index, row_id in enumerate(ids):
        if row_id is None:
            continue
        if row_id in seen:
            duplicates.add(index)
        seen.add(row_id)
    return duplicates


def fill_transcripts(rows: list[PreparedRow], transcriber: WhisperTranscriber) -> None:
    missing = [row for row in rows if not row.transcript]
    if missing:
        for row, text in zip(missing, transcriber.transcribe([row.audio for row in missing])):
            row.transcript = text


def process_batch(
    source, columns, indices, ids, generator, transcriber, options: BuildOptions, summary: BuildSummary
) -> list[dict[str, Any]]:
    rows = []
    for index, raw in zip(indices, source.fetch(indices)):
        try:
            rows.append(prepare_row(source, raw, index, ids[index], columns))
        except BadRow as error:
            summary.skip(index, ids[index], error)
    if transcriber is not None:
        fill_transcripts(rows, transcriber)
    if options.require_transcript:
        for row in [r for r in rows if not r.transcript]:
            summary.skip(
                row.index, row.id, BadRow("empty transcript", "--require-transcript is set and the row has none")
            )
            rows.remove(row)
    if not rows:
        return []
    descriptions = [row.description() for row in rows]
    instructions = [pick_instruction(options.instructions, options.seed, row.id) for row in rows]
    conversations = [generation_messages(d, i) for d, i in zip(descriptions, instructions)]
    batch_seed = row_random(options.seed, rows[0].id, "generation").getrandbits(63)
    responses = generator.generate(conversations, seed=batch_seed)
    records = []
    for row, description, instruction, response in zip(rows, descriptions, instructions, responses):
        if isinstance(response, RejectedAnswer):  # never a training target: skipped and counted
            summary.skip(row.index, row.id, BadRow("rejected answer", str(response)))
            continue
        if row.audio_file is None:
            row.audio_file = stored_clip(options.output_dir, row.id, row.audio)
        records.append(make_record(row, source.label, description, instruction, response))
    return records


def build(
    source,
    columns: SourceColumns,
    generator: ResponseGenerator,
    options: BuildOptions,
    transcriber: WhisperTranscriber | None = None,
) -> BuildSummary:
    """Generate records for this shard's rows that are not written yet; write summary(.json) even when interrupted.

    Holds this shard's lock and the folder's shard-layout lock throughout, and refuses a folder built with other
    `options.settings` (unless `force`).
    """
    if not 0 <= options.shard_index < options.num_shards:
        raise ValueError(f"--shard-index must be in [0, {options.num_shards}); got {options.shard_index}")
    with (
        LayoutLock(options.output_dir, options.num_shards),
        ShardLock(options.output_dir, options.shard_index, options.num_shards),
    ):
        if options.settings is not None:
            check_build_settings(options.output_dir, options.settings, options.force)
        return _build_shard(source, columns, generator, options, transcriber)


def _build_shard(source, columns, generator, options: BuildOptions, transcriber) -> BuildSummary:
    check_columns(source, columns)
    started = time.perf_counter()
    ids = source.ids(columns)
    duplicates = duplicate_indices(ids)
    done = finished_ids(options.output_dir)
    summary = BuildSummary(source_rows=len(source))
    pending = []
    for index in range(options.shard_index, len(source), options.num_shards):
        summary.shard_rows += 1
        if ids[index] in done:
            summary.already_done += 1
        elif index in duplicates:
            summary.skip(index, ids[index], BadRow("duplicate id", f"id {ids[index]!r} already used by an earlier row"))
        else:
            pending.append(index)
    logger.info(
        "%d rows in shard %d/%d: %d already written, %d to do",
        summary.shard_rows,
        options.shard_index,
        options.num_shards,
        summary.already_done,
        len(pending),
    )
    writer = JsonlWriter(shard_file(options.output_dir, options.shard_index, options.num_shards))
    try:
        with tqdm(total=len(pending), unit="row", desc="generating", disable=not options.progress) as bar:
            for indices in chunks(pending, options.batch_size):
                records = process_batch(source, columns, indices, ids, generator, transcriber, options, summary)
                writer.write(records)
                summary.written += len(records)
                bar.update(len(indices))
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        writer.close()
        summary.elapsed_s = time.perf_counter() - started
        write_json_atomic(summary_file(options.output_dir, options.shard_index, options.num_shards), summary.to_dict())
        log_summary(summary)
    return summary


def log_summary(summary: BuildSummary) -> None:
    state = "interrupted" if summary.interrupted else "done"
    logger.info(
        "%s: %d written, %d already done, %d skipped in %.1f s",
        state,
        summary.written,
        summary.already_done,
        sum(summary.skipped.values()),
        summary.elapsed_s,
    )
    for reason, count in summary.skipped.most_common():
        logger.warning("skipped %d row(s): %s", count, reason)
