#!/usr/bin/env python3
"""Build DeSTA-style self-generated training data: seed descriptions from metadata, answered by the backbone LLM.

Examples:
  # a folder of audio described by a CSV (columns: file, text, gender, emotion)
  python build_dataset.py --audio-dir clips/ --metadata clips/meta.csv --audio-column file \\
      --transcript-column text --attribute-columns gender,emotion \\
      --model meta-llama/Llama-3.1-8B-Instruct --output-dir out/

  # a datasets dataset, 4 machines: run shard K of 4 on each, then merge once
  python build_dataset.py --dataset ashraq/esc50 --split train --attribute-columns category \\
      --model LLM --output-dir out/ --num-shards 4 --shard-index K
  python build_dataset.py --output-dir out/ --merge-only

  # any OpenAI-compatible server (vllm serve, SGLang, transformers serve), 64 requests in flight
  vllm serve meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 8 --port 8000 &
  python build_dataset.py --audio-dir clips/ --metadata clips/meta.csv ... --engine openai \\
      --base-url http://127.0.0.1:8000/v1 --model meta-llama/Llama-3.1-8B-Instruct \\
      --max-concurrency 64 --batch-size 256 --output-dir out/

Rerunning the same command resumes: rows already in OUTPUT_DIR/records are skipped by id.
A user error ends in one line `build_dataset.py: error: ...` (exit code 2); `--debug` shows the traceback instead.
The library behind this script is `desta_audio.data`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path

from desta_audio import data as sg
from desta_audio.cli import report_errors
from desta_audio.data.descriptions import DEFAULT_INSTRUCTIONS
from desta_audio.data.store import SETTINGS_FILE, record_files, records_dir

logger = logging.getLogger("build_dataset")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 or less once ended deep in the build in a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_dataset.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_argument_group("source (a folder of audio, or a datasets dataset)")
    source.add_argument(
        "--audio-dir",
        help="folder of audio files; metadata paths are relative to it (default: the metadata file's folder). Without --metadata every audio file under it is one row",
    )
    source.add_argument("--metadata", help="CSV/TSV (with header) or JSON Lines file, one row per clip")
    source.add_argument(
        "--dataset", help="a datasets dataset name (Hub id or local loading script/folder) with an audio column"
    )
    source.add_argument("--config", help="configuration name of --dataset")
    source.add_argument(
        "--split",
        default="train",
        help="split of --dataset / --load-from-disk; also part of row ids and audio references (default: train)",
    )
    source.add_argument(
        "--load-from-disk",
        metavar="DIR",
        help="a dataset saved with save_to_disk (a Dataset, or a DatasetDict indexed by --split)",
    )

    columns = parser.add_argument_group("columns")
    columns.add_argument(
        "--audio-column",
        default="audio",
        help="column holding the audio: a path, or a datasets Audio value (default: audio)",
    )
    columns.add_argument(
        "--transcript-column", help="column holding the transcript; clips without one are described as non-speech"
    )
    columns.add_argument(
        "--attribute-columns",
        default="",
        help="comma-separated columns that become '(Key: Value, ...)' attributes, keys title-cased (speaking_speed -> Speaking speed)",
    )
    columns.add_argument(
        "--segments-column",
        help="column holding a list of {start, end, text, speaker, ...} segments (or its JSON), one description line each",
    )
    columns.add_argument(
        "--id-column",
        help="column holding a unique row id (default: the audio path relative to --audio-dir, or DATASET/SPLIT/INDEX)",
    )
    columns.add_argument(
        "--dataset-label", help="value of the records' 'dataset' field (default: the folder or dataset name)"
    )
    columns.add_argument(
        "--require-transcript",
        action="store_true",
        help="skip rows whose transcript is empty (after ASR, if --asr-model is given)",
    )

    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--model",
        help="backbone LLM: Hub id or local folder; with --engine openai, the model name the server knows "
        "(required unless --merge-only)",
    )
    generation.add_argument(
        "--engine",
        "--backend",
        dest="engine",
        choices=["transformers", "vllm", "openai"],
        default="transformers",
        help="transformers: in this process (default); vllm: offline vllm.LLM on this node (pip install vllm); "
        "openai: any OpenAI-compatible server at --base-url (vllm serve, SGLang, transformers serve)",
    )
    generation.add_argument(
        "--base-url", help="--engine openai: the API root, e.g. http://127.0.0.1:8000/v1 (a load balancer for a fleet)"
    )
    generation.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="--engine openai: environment variable holding the API key, if the server wants one (default: OPENAI_API_KEY)",
    )
    generation.add_argument(
        "--max-concurrency",
        type=positive_int,
        default=16,
        help="--engine openai: requests in flight at once; use --batch-size >= this (default: 16)",
    )
    generation.add_argument(
        "--max-retries",
        type=int,
        default=8,
        help="--engine openai: retries of a request on 429/5xx/timeouts/refused connections, with exponential "
        "backoff, before the run stops (rerun to resume; default: 8)",
    )
    generation.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="--engine openai: seconds one request may take in all, connecting, waiting and reading the answer "
        "(a server that never answers or drips is retried, then the run stops; default: 600)",
    )
    generation.add_argument(
        "--keep-truncated-answers",
        action="store_true",
        help="--engine openai: keep answers cut at --max-new-tokens (finish_reason 'length'); by default they are "
        "skipped and counted, never training targets",
    )
    generation.add_argument(
        "--max-retry-wait",
        type=float,
        default=60.0,
        help="--engine openai: longest wait between two retries in seconds; waits double from 1 s up to it (default: 60)",
    )
    generation.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="--engine vllm: GPUs per model replica (default: 1)"
    )
    generation.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="--engine transformers: run every prompt whole instead of reusing the shared prefix's KV cache",
    )
    generation.add_argument(
        "--prompts", help=f"instruction pool, one per line (default: the shipped {DEFAULT_INSTRUCTIONS.name})"
    )
    generation.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="rows per generation (and ASR) batch; also the most work lost on a crash (default: 8)",
    )
    generation.add_argument("--max-new-tokens", type=int, default=512, help="longest response in tokens (default: 512)")
    generation.add_argument(
        "--temperature", type=float, default=0.0, help="0 is greedy decoding; above 0 samples (default: 0)"
    )
    generation.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling threshold when --temperature > 0 (default: 1.0)"
    )
    generation.add_argument(
        "--seed", type=int, default=0, help="seeds instruction choice per row and sampling per batch (default: 0)"
    )
    generation.add_argument("--device", help="torch device, e.g. cuda:0 (default: cuda when available, else cpu)")
    generation.add_argument(
        "--dtype", default="auto", help="model weight dtype: auto, bfloat16, float16, float32 (default: auto)"
    )
    generation.add_argument(
        "--asr-model", help="Whisper id or folder that transcribes rows with no transcript (greedy, batched)"
    )

    output = parser.add_argument_group("output and scale-out")
    output.add_argument(
        "--output-dir", required=True, help="records/ (JSONL shards), summary.json and dataset/ (save_to_disk) go here"
    )
    output.add_argument(
        "--num-shards",
        type=positive_int,
        default=1,
        help="split the source rows into N parts by row index modulo N (default: 1)",
    )
    output.add_argument(
        "--shard-index", type=int, default=0, help="which part this process builds, 0..N-1 (default: 0)"
    )
    output.add_argument(
        "--merge-only",
        action="store_true",
        help="generate nothing: merge all records into OUTPUT_DIR/dataset (after sharded runs)",
    )
    output.add_argument(
        "--push-to-hub", metavar="REPO", help="push the merged dataset, audio included, to this Hub dataset repo"
    )
    output.add_argument(
        "--force",
        action="store_true",
        help="add to an output dir built with other settings (seed, model, prompts, columns, source, generation)",
    )
    output.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    output.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index must be in [0, {args.num_shards}) for --num-shards {args.num_shards}")

    sources = [args.dataset, args.load_from_disk, args.audio_dir or args.metadata]
    if not args.merge_only:
        if sum(s is not None for s in sources) != 1:
            parser.error("give exactly one source: --audio-dir/--metadata, --dataset or --load-from-disk")
        if not args.model:
            parser.error("--model is required unless --merge-only")
        if args.engine == "openai" and not args.base_url:
            parser.error("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    return args


def open_source(args: argparse.Namespace):
    if args.dataset or args.load_from_disk:
        return sg.dataset_source(
            args.dataset, args.config, args.split, args.audio_column, args.dataset_label, args.load_from_disk
        )
    return sg.folder_source(args.audio_dir, args.metadata, args.audio_column, args.dataset_label)


def make_generator(args: argparse.Namespace):
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
    if args.engine == "openai":
        return sg.OpenAIGenerator.from_environment(
            args.base_url,
            args.model,
            args.api_key_env,
            max_concurrency=args.max_concurrency,
            max_retries=args.max_retries,
            max_backoff_s=args.max_retry_wait,
            timeout_s=args.request_timeout,
            keep_truncated=args.keep_truncated_answers,
            **options,
        )
    if args.engine == "vllm":
        return sg.VLLMGenerator(args.model, dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size, **options)
    return sg.TransformersGenerator.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, reuse_prefix=not args.no_prefix_cache, **options
    )


def check_paths(args: argparse.Namespace) -> None:
    """Name the flag of a missing input or an unusable --output-dir before anything is loaded."""
    for flag, value, is_kind, kind in (
        ("--metadata", args.metadata, Path.is_file, "file"),
        ("--prompts", args.prompts, Path.is_file, "file"),
        ("--audio-dir", args.audio_dir, Path.is_dir, "folder"),
        ("--load-from-disk", args.load_from_disk, Path.is_dir, "folder"),
    ):
        if value is not None and not is_kind(Path(value)):
            raise FileNotFoundError(f"{flag} {value}: no such {kind}")
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output-dir {output} is a file, not a folder; name a folder (it is made if missing)")
    if args.merge_only and not output.is_dir():
        raise FileNotFoundError(f"--output-dir {output}: no such folder to --merge-only")


def make_output_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output-dir {path}: cannot make the folder ({error.strerror})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_fingerprint(args: argparse.Namespace) -> dict:
    """The --metadata file's sha256: the arguments alone miss an edited file, whose old rows a resume would keep.

    Left out for a folder whose saved settings predate it, which would otherwise be refused on every resume."""
    if not args.metadata:
        return {}
    saved_file = Path(args.output_dir) / SETTINGS_FILE
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8")) if saved_file.is_file() else None
    except ValueError:
        saved = None  # check_build_settings names the unreadable file
    if isinstance(saved, dict) and "metadata_sha256" not in saved:
        logger.warning("%s predates metadata fingerprints: an edited --metadata file goes unnoticed", saved_file)
        return {}
    return {"metadata_sha256": file_sha256(args.metadata)}


def build_settings(args: argparse.Namespace, columns) -> dict:
    """What shapes the records (not how fast they are made): a resume must use the same, see `--force`."""
    prompts = sg.load_instructions(args.prompts)
    return {
        "source": {key: getattr(args, key) for key in ("dataset", "config", "split", "load_from_disk", "metadata")},
        "audio_dir": str(Path(args.audio_dir).resolve()) if args.audio_dir else None,
        "columns": dataclasses.asdict(columns),
        "dataset_label": args.dataset_label,
        "require_transcript": args.require_transcript,
        "model": args.model,
        "engine": args.engine,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest(),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "asr_model": args.asr_model,
        # Only when set, so folders built before the flag existed keep their fingerprint.
        **({"keep_truncated_answers": True} if args.keep_truncated_answers else {}),
        **metadata_fingerprint(args),
    }


def run_build(args: argparse.Namespace) -> None:
    columns = sg.SourceColumns(
        audio=args.audio_column,
        transcript=args.transcript_column,
        attributes=tuple(c.strip() for c in args.attribute_columns.split(",") if c.strip()),
        segments=args.segments_column,
        id=args.id_column,
    )
    options = sg.BuildOptions(
        output_dir=Path(args.output_dir),
        instructions=sg.load_instructions(args.prompts),
        seed=args.seed,
        batch_size=args.batch_size,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        require_transcript=args.require_transcript,
        settings=build_settings(args, columns),
        force=args.force,
    )
    source = open_source(args)
    transcriber = (
        sg.WhisperTranscriber.from_pretrained(args.asr_model, device=args.device, batch_size=args.batch_size)
        if args.asr_model
        else None
    )
    sg.build(source, columns, make_generator(args), options, transcriber)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return report_errors("build_dataset.py", lambda: run(args), args.debug)


def run(args: argparse.Namespace) -> int:
    check_paths(args)
    make_output_dir(args.output_dir)
    if not args.merge_only:
        code = build_shard(args)
        if code is not None:
            return code
    dataset = merge(args)
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub)
    return 0


def build_shard(args: argparse.Namespace) -> int | None:
    """This process's shard; an exit code where the run ends here, None where the merge follows."""
    try:
        run_build(args)
    except KeyboardInterrupt:
        logger.warning("interrupted: rerun the same command to resume")
        return 130
    except sg.BuildLockedError as error:
        raise ValueError(str(error)) from None
    except sg.EngineError as error:
        logger.error("%s; every finished batch is saved: rerun the same command to resume", error)
        return 1
    if args.num_shards > 1:
        logger.info(
            "shard %d/%d done; after all shards, run with --merge-only to build the dataset",
            args.shard_index,
            args.num_shards,
        )
        return 0
    return None


def merge(args: argparse.Namespace):
    """`merge_records`, refusing a folder with no records, and naming the file and line of a bad one (`datasets`
    wraps the reader's error in its own)."""
    import datasets

    if not any(path.stat().st_size for path in record_files(args.output_dir)):
        folder = records_dir(args.output_dir)
        if args.merge_only:
            raise ValueError(f"--merge-only: {folder} holds no records; build into this --output-dir first")
        raise ValueError(f"{folder} holds no records to merge: every row was skipped (see summary.json)")
    try:
        return sg.merge_records(args.output_dir)
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise


if __name__ == "__main__":
    sys.exit(main())
