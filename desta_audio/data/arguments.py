"""Everything `build_dataset.py` does, as a library: `BuildArguments` (every flag with its help text, the checks of
flag combinations, the resume fingerprint), the parser made from it, the wiring from arguments to a source, a
generator and a transcriber, and `run`/`main`.

    from desta_audio.data import build_main
    build_main(["--audio-dir", "clips/", "--model", "LLM", "--output-dir", "out/"])  # = python build_dataset.py ...

The flags are the dataclass fields, translated as `HfArgumentParser` (and so `train_sft.py`) does: each takes
both spellings (`--audio-dir` and `--audio_dir`); a boolean is a bare flag (`--merge-only`) or takes a value
(`--merge-only false`). `add_build_arguments` adds them to any parser (e.g. a `desta-audio build` subcommand).
"""

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from transformers import HfArgumentParser

from ..errors import report_errors
from .builder import BuildOptions, build
from .descriptions import DEFAULT_INSTRUCTIONS, load_instructions
from .engines import TransformersGenerator, VLLMGenerator, WhisperTranscriber
from .engines_openai import EngineError, OpenAIGenerator
from .sources import SourceColumns, dataset_source, folder_source
from .store import SETTINGS_FILE, BuildLockedError, merge_records, record_files, records_dir

logger = logging.getLogger(__name__)

PROG = "build_dataset.py"
ENGINES = ("transformers", "vllm", "openai")
# --help headings, each before the first field of its group (the fields are declared group by group).
HEADINGS = {
    "audio_dir": "source (a folder of audio, or a datasets dataset)",
    "audio_column": "columns",
    "model": "generation",
    "output_dir": "output and scale-out",
}


@dataclass(kw_only=True)
class BuildArguments:
    """The arguments of `build_dataset.py`; constructing one checks them (`ValueError` naming the flag)."""

    # source
    audio_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder of audio files; metadata paths are relative to it (default: the metadata file's folder). "
            "Without --metadata every audio file under it is one row"
        },
    )
    metadata: str | None = field(
        default=None, metadata={"help": "CSV/TSV (with header) or JSON Lines file, one row per clip"}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "a datasets dataset name (Hub id or local loading script/folder) with an audio column"},
    )
    config: str | None = field(default=None, metadata={"help": "configuration name of --dataset"})
    split: str = field(
        default="train",
        metadata={
            "help": "split of --dataset / --load-from-disk; also part of row ids and audio references (default: train)"
        },
    )
    load_from_disk: str | None = field(
        default=None,
        metadata={
            "help": "a dataset saved with save_to_disk (a Dataset, or a DatasetDict indexed by --split)",
            "metavar": "DIR",
        },
    )

    # columns
    audio_column: str = field(
        default="audio",
        metadata={"help": "column holding the audio: a path, or a datasets Audio value (default: audio)"},
    )
    transcript_column: str | None = field(
        default=None,
        metadata={"help": "column holding the transcript; clips without one are described as non-speech"},
    )
    attribute_columns: str = field(
        default="",
        metadata={
            "help": "comma-separated columns that become '(Key: Value, ...)' attributes, keys title-cased "
            "(speaking_speed -> Speaking speed)"
        },
    )
    segments_column: str | None = field(
        default=None,
        metadata={
            "help": "column holding a list of {start, end, text, speaker, ...} segments (or its JSON), "
            "one description line each"
        },
    )
    id_column: str | None = field(
        default=None,
        metadata={
            "help": "column holding a unique row id (default: the audio path relative to --audio-dir, "
            "or DATASET/SPLIT/INDEX)"
        },
    )
    dataset_label: str | None = field(
        default=None,
        metadata={"help": "value of the records' 'dataset' field (default: the folder or dataset name)"},
    )
    require_transcript: bool = field(
        default=False,
        metadata={"help": "skip rows whose transcript is empty (after ASR, if --asr-model is given)"},
    )

    # generation
    model: str | None = field(
        default=None,
        metadata={
            "help": "backbone LLM: Hub id or local folder; with --engine openai, the model name the server knows "
            "(required unless --merge-only)"
        },
    )
    engine: str = field(
        default="transformers",
        metadata={
            "help": "transformers: in this process (default); vllm: offline vllm.LLM on this node (pip install "
            "vllm); openai: any OpenAI-compatible server at --base-url (vllm serve, SGLang, transformers serve)",
            "choices": list(ENGINES),
            "aliases": ["--backend"],
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={"help": "--engine openai: the API root, e.g. http://127.0.0.1:8000/v1 (a load balancer for a fleet)"},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "--engine openai: environment variable holding the API key, if the server wants one "
            "(default: OPENAI_API_KEY)"
        },
    )
    max_concurrency: int = field(
        default=16,
        metadata={"help": "--engine openai: requests in flight at once; use --batch-size >= this (default: 16)"},
    )
    max_retries: int = field(
        default=8,
        metadata={
            "help": "--engine openai: retries of a request on 429/5xx/timeouts/refused connections, with "
            "exponential backoff, before the run stops (rerun to resume; default: 8)"
        },
    )
    request_timeout: float = field(
        default=600.0,
        metadata={
            "help": "--engine openai: seconds one request may take in all, connecting, waiting and reading the "
            "answer (a server that never answers or drips is retried, then the run stops; default: 600)"
        },
    )
    keep_truncated_answers: bool = field(
        default=False,
        metadata={
            "help": "--engine openai: keep answers cut at --max-new-tokens (finish_reason 'length'); by default "
            "they are skipped and counted, never training targets"
        },
    )
    max_retry_wait: float = field(
        default=60.0,
        metadata={
            "help": "--engine openai: longest wait between two retries in seconds; waits double from 1 s up to it "
            "(default: 60)"
        },
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "--engine vllm: GPUs per model replica (default: 1)"}
    )
    vllm_options: str | None = field(
        default=None,
        metadata={
            "help": "--engine vllm: more vllm.LLM arguments as a JSON object, e.g. "
            '\'{"gpu_memory_utilization": 0.5, "max_model_len": 8192}\' (vLLM\'s CPU build needs a '
            "gpu_memory_utilization that fits the machine's free memory)"
        },
    )
    no_prefix_cache: bool = field(
        default=False,
        metadata={
            "help": "--engine transformers: run every prompt whole instead of reusing the shared prefix's KV cache"
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={"help": f"instruction pool, one per line (default: the shipped {DEFAULT_INSTRUCTIONS.name})"},
    )
    batch_size: int = field(
        default=8,
        metadata={"help": "rows per generation (and ASR) batch; also the most work lost on a crash (default: 8)"},
    )
    max_new_tokens: int = field(default=512, metadata={"help": "longest response in tokens (default: 512)"})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy decoding; above 0 samples (default: 0)"})
    top_p: float = field(
        default=1.0, metadata={"help": "nucleus sampling threshold when --temperature > 0 (default: 1.0)"}
    )
    seed: int = field(
        default=0, metadata={"help": "seeds instruction choice per row and sampling per batch (default: 0)"}
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device, e.g. cuda:0 (default: cuda when available, else cpu)"}
    )
    dtype: str = field(
        default="auto", metadata={"help": "model weight dtype: auto, bfloat16, float16, float32 (default: auto)"}
    )
    asr_model: str | None = field(
        default=None,
        metadata={"help": "Whisper id or folder that transcribes rows with no transcript (greedy, batched)"},
    )

    # output and scale-out
    output_dir: str = field(
        metadata={"help": "records/ (JSONL shards), summary.json and dataset/ (save_to_disk) go here"}
    )
    num_shards: int = field(
        default=1, metadata={"help": "split the source rows into N parts by row index modulo N (default: 1)"}
    )
    shard_index: int = field(default=0, metadata={"help": "which part this process builds, 0..N-1 (default: 0)"})
    merge_only: bool = field(
        default=False,
        metadata={"help": "generate nothing: merge all records into OUTPUT_DIR/dataset (after sharded runs)"},
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "push the merged dataset, audio included, to this Hub dataset repo", "metavar": "REPO"},
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "add to an output dir built with other settings (seed, model, prompts, columns, source, generation)"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "logging level (default: INFO)"})
    debug: bool = field(default=False, metadata={"help": "show the full traceback of an error"})

    def __post_init__(self):
        for flag, value in (
            ("--max-concurrency", self.max_concurrency),
            ("--batch-size", self.batch_size),
            ("--num-shards", self.num_shards),
        ):
            if value < 1:  # 0 or less would otherwise end deep in the build in a traceback
                raise ValueError(f"argument {flag}: must be at least 1; got {value}")
        if self.engine not in ENGINES:
            choices = ", ".join(map(repr, ENGINES))
            raise ValueError(f"argument --engine: invalid choice: {self.engine!r} (choose from {choices})")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, {self.num_shards}) for --num-shards {self.num_shards}")
        if self.merge_only:
            return
        sources = [self.dataset, self.load_from_disk, self.audio_dir or self.metadata]
        if sum(s is not None for s in sources) != 1:
            raise ValueError("give exactly one source: --audio-dir/--metadata, --dataset or --load-from-disk")
        if not self.model:
            raise ValueError("--model is required unless --merge-only")
        if self.engine == "openai" and not self.base_url:
            raise ValueError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "BuildArguments":
        """The arguments among a parsed namespace's attributes (others, e.g. a subcommand's handler, are left)."""
        names = {spec.name for spec in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in vars(namespace).items() if key in names})

    def settings(self, columns: SourceColumns) -> dict:
        """What shapes the records (not how fast they are made): a resume must use the same, see `--force`.
        Saved as OUTPUT_DIR/build_settings.json; a key added here changes every existing folder's fingerprint."""
        prompts = load_instructions(self.prompts)
        return {
            "source": {key: getattr(self, key) for key in ("dataset", "config", "split", "load_from_disk", "metadata")},
            "audio_dir": str(Path(self.audio_dir).resolve()) if self.audio_dir else None,
            "columns": dataclasses.asdict(columns),
            "dataset_label": self.dataset_label,
            "require_transcript": self.require_transcript,
            "model": self.model,
            "engine": self.engine,
            "prompts_sha256": hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest(),
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "asr_model": self.asr_model,
            # Only when set, so folders built before the flag existed keep their fingerprint.
            **({"keep_truncated_answers": True} if self.keep_truncated_answers else {}),
            **self.metadata_fingerprint(),
        }

    def metadata_fingerprint(self) -> dict:
        """The --metadata file's sha256: the arguments alone miss an edited file, whose old rows a resume would keep.

        Left out for a folder whose saved settings predate it, which would otherwise be refused on every resume."""
        if not self.metadata:
            return {}
        saved_file = Path(self.output_dir) / SETTINGS_FILE
        try:
            saved = json.loads(saved_file.read_text(encoding="utf-8")) if saved_file.is_file() else None
        except ValueError:
            saved = None  # check_build_settings names the unreadable file
        if isinstance(saved, dict) and "metadata_sha256" not in saved:
            logger.warning("%s predates metadata fingerprints: an edited --metadata file goes unnoticed", saved_file)
            return {}
        return {"metadata_sha256": file_sha256(self.metadata)}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- parsing


def add_build_arguments(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> argparse.ArgumentParser:
    """Every `BuildArguments` field as a flag of `parser`, made by `HfArgumentParser`'s own translation of a field,
    under the --help headings of `HEADINGS`. `exclude` names fields to leave out (e.g. "debug" where the parser has
    a `--debug` of its own); `BuildArguments.from_namespace` then takes their defaults."""
    hints = get_type_hints(BuildArguments)
    group = parser
    for spec in dataclasses.fields(BuildArguments):
        if spec.name in HEADINGS:
            group = parser.add_argument_group(HEADINGS[spec.name])
        if spec.name not in exclude:
            spec = copy.copy(spec)  # the translation narrows `spec.type`; the class's own field stays as it is
            spec.type = hints[spec.name]
            HfArgumentParser._parse_dataclass_field(group, spec)
    return parser


def make_parser(prog: str = PROG, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or __doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_build_arguments(parser)


def parse_args(argv: list[str] | None = None, prog: str = PROG, description: str | None = None) -> BuildArguments:
    """`BuildArguments` from a command line (default: `sys.argv[1:]`); a bad flag or combination of flags ends in
    argparse's usage and one `PROG: error: ...` line, exit code 2."""
    parser = make_parser(prog, description)
    namespace = parser.parse_args(argv)
    try:
        return BuildArguments.from_namespace(namespace)
    except ValueError as error:
        parser.error(str(error))


# ----------------------------------------------------------------------------- wiring


def source_columns(args: BuildArguments) -> SourceColumns:
    return SourceColumns(
        audio=args.audio_column,
        transcript=args.transcript_column,
        attributes=tuple(c.strip() for c in args.attribute_columns.split(",") if c.strip()),
        segments=args.segments_column,
        id=args.id_column,
    )


def open_source(args: BuildArguments):
    if args.dataset or args.load_from_disk:
        return dataset_source(
            args.dataset, args.config, args.split, args.audio_column, args.dataset_label, args.load_from_disk
        )
    return folder_source(args.audio_dir, args.metadata, args.audio_column, args.dataset_label)


def make_generator(args: BuildArguments):
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
    if args.engine == "openai":
        return OpenAIGenerator.from_environment(
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
        engine_options = {"tensor_parallel_size": args.tensor_parallel_size, **vllm_engine_options(args.vllm_options)}
        return VLLMGenerator(args.model, dtype=args.dtype, **engine_options, **options)
    return TransformersGenerator.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, reuse_prefix=not args.no_prefix_cache, **options
    )


def vllm_engine_options(text: str | None) -> dict:
    """`--vllm-options`: a JSON object of `vllm.LLM` arguments."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--vllm-options must be a JSON object: {error}") from None
    if not isinstance(options, dict):
        raise ValueError(f"--vllm-options must be a JSON object of vllm.LLM arguments; got {text!r}")
    return options


def make_transcriber(args: BuildArguments) -> WhisperTranscriber | None:
    if not args.asr_model:
        return None
    return WhisperTranscriber.from_pretrained(args.asr_model, device=args.device, batch_size=args.batch_size)


def build_options(args: BuildArguments, columns: SourceColumns) -> BuildOptions:
    return BuildOptions(
        output_dir=Path(args.output_dir),
        instructions=load_instructions(args.prompts),
        seed=args.seed,
        batch_size=args.batch_size,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        require_transcript=args.require_transcript,
        settings=args.settings(columns),
        force=args.force,
    )


# ----------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None, prog: str = PROG, description: str | None = None) -> int:
    """`build_dataset.py`: parse, log, `run`, and end an error the project's way (`report_errors`)."""
    args = parse_args(argv, prog, description)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return report_errors(prog, lambda: run(args), args.debug)


def run(args: BuildArguments) -> int:
    """Build this process's shard (unless --merge-only), merge every record into OUTPUT_DIR/dataset, push it."""
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


def check_paths(args: BuildArguments) -> None:
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


def build_shard(args: BuildArguments) -> int | None:
    """This process's shard; an exit code where the run ends here, None where the merge follows."""
    try:
        columns = source_columns(args)
        options = build_options(args, columns)
        build(open_source(args), columns, make_generator(args), options, make_transcriber(args))
    except KeyboardInterrupt:
        logger.warning("interrupted: rerun the same command to resume")
        return 130
    except BuildLockedError as error:
        raise ValueError(str(error)) from None
    except EngineError as error:
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


def merge(args: BuildArguments):
    """`merge_records`, refusing a folder with no records, and naming the file and line of a bad one (`datasets`
    wraps the reader's error in its own)."""
    import datasets

    if not any(path.stat().st_size for path in record_files(args.output_dir)):
        folder = records_dir(args.output_dir)
        if args.merge_only:
            raise ValueError(f"--merge-only: {folder} holds no records; build into this --output-dir first")
        raise ValueError(f"{folder} holds no records to merge: every row was skipped (see summary.json)")
    try:
        return merge_records(args.output_dir)
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise
