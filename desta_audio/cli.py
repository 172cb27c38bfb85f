"""`desta-audio`, the one command-line front end of the project (nothing imports this module).

    desta-audio chat clip.wav [more.wav ...] -p "What is the speaker's emotion?" [--model REPO_OR_DIR] [--stream] [-v]
    desta-audio eval (--data-file FILE | --dataset NAME | --rescore PREDICTIONS | --retention) [--model ...]
    desta-audio convert --checkpoint DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B --output DIR [--push-to-hub REPO]
    desta-audio smoke-qa OUT_DIR
    desta-audio lab OUT_DIR [--train-clips 600] [--probe-clips 240] [--seed 0] [--jobs 2] [--splits train probe]
    desta-audio demo [--model REPO_OR_DIR] [--host HOST] [--port PORT] [--share]   (needs the `demo` extra)

Every command takes `--debug` (a traceback instead of the one-line error). See docs/evaluation.md for `eval`;
`build` is `build_dataset.py` (the same arguments); `train_sft.py` is a script of its own. All end their errors through
`desta_audio.errors.report_errors`.
"""

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

import yaml
from transformers import AutoConfig

from modeling_desta.configuration_desta import DestaReleaseConfig
from modeling_desta.release_desta import RELEASE_REPO_ID, fetch_component
from processing import DEFAULT_SYSTEM_PROMPT, audio_chat

from . import evaluation as ev
from .data.arguments import BuildArguments, add_build_arguments
from .data.arguments import run as run_dataset_build
from .demo import add_demo_arguments, run_demo
from .errors import report_errors
from .evaluation.smoke_qa import make_smoke_qa
from .files import read_text
from .hub.convert import convert
from .hub.publishing import publish
from .lab import DEFAULT_CLIPS, make_lab
from .lab.catalog import SPLITS
from .runtime import DTYPES, QUANTIZATION_EXTRA, QUANTIZATION_LIBRARIES, AnswerStream, load_pipeline, resolve_device

# The authors' release: it loads as it is (its connector, on the LLM and Whisper it names), no conversion step.
DEFAULT_MODEL_ID = RELEASE_REPO_ID
DEFAULT_PROMPT = "Describe the audio."
DEFAULT_EVAL_OUTPUT_DIR = "eval_results"

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
DESTA_MODEL_TYPES = ("desta", DestaReleaseConfig.model_type)

logger = logging.getLogger("desta-audio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desta-audio", description="DeSTA2.5-Audio from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_chat_arguments(commands.add_parser("chat", help="answer a question about audio clips")).set_defaults(
        handler=run_chat
    )
    add_eval_arguments(
        commands.add_parser("eval", help="score a benchmark, re-score predictions, or check knowledge retention")
    ).set_defaults(handler=run_eval)
    add_convert_arguments(
        commands.add_parser("convert", help="convert the authors' release format into a self-contained checkpoint")
    ).set_defaults(handler=run_convert)
    build = commands.add_parser("build", help="build a self-generated dataset (build_dataset.py's arguments)")
    add_build_arguments(build, exclude=("debug",)).set_defaults(handler=run_build)
    smoke = commands.add_parser("smoke-qa", help="build the 16-question espeak-ng/sox audio QA set offline")
    smoke.add_argument("output_dir", help="folder for smoke_qa.json and audio/")
    smoke.set_defaults(handler=run_smoke_qa)
    add_lab_arguments(
        commands.add_parser("lab", help="write labelled espeak-ng/sox clips: a training split and the hearing probe")
    ).set_defaults(handler=run_lab)
    add_demo_arguments(commands.add_parser("demo", help="serve the web demo (Gradio; the `demo` extra)")).set_defaults(
        handler=run_checked_demo
    )
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def add_chat_arguments(chat: argparse.ArgumentParser) -> argparse.ArgumentParser:
    chat.add_argument("audio", nargs="+", help="audio files or http(s) URLs, all placed in one user turn")
    chat.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help=f"the question (default: {DEFAULT_PROMPT!r})")
    chat.add_argument(
        "--system",
        default=None,
        help=f"system prompt (default: the checkpoint processor's default_system_prompt, {DEFAULT_SYSTEM_PROMPT!r})",
    )
    chat.add_argument("--transcript", action="append", default=None, help="transcript per clip, in order (skips ASR)")
    chat.add_argument("--model", default=DEFAULT_MODEL_ID, help=f"Hub id or local folder (default: {DEFAULT_MODEL_ID})")
    chat.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
    chat.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    add_quantize_argument(chat)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    chat.add_argument("--temperature", type=float, default=0.7, help="with --sample")
    chat.add_argument("--top-p", type=float, default=0.9, help="with --sample")
    chat.add_argument("--stream", action="store_true", help="print the answer token by token")
    chat.add_argument("-v", "--verbose", action="store_true", help="also print the transcripts used")
    chat.add_argument(
        "--audio-policy",
        default=None,
        help='audio source policy settings as JSON, e.g. \'{"allow_urls": false}\' (see README "Serving safely")',
    )
    return chat


def check_model(model: str) -> None:
    """One clear line, before any weights load, for a --model that is a missing folder, not a saved model, not a
    DeSTA checkpoint, or a repo that is missing, gated or unreachable (for the authors' release format, its LLM and
    Whisper too: Llama 3.1 needs its licence accepted). Only config files are fetched."""
    path = Path(model).expanduser()
    if path.exists() or looks_like_local_path(model) or not HUB_ID.fullmatch(model):
        check_model_folder(model, path)
    config = fetch_component(AutoConfig.from_pretrained, model, "model", "--model")
    if config.model_type not in DESTA_MODEL_TYPES:
        raise ValueError(
            f"--model {model}: this is a {config.model_type!r} model, not a DeSTA checkpoint (model_type 'desta', or "
            "'desta25' for the authors' release); build one with train_sft.py or `desta-audio convert`"
        )
    if isinstance(config, DestaReleaseConfig):
        fetch_component(AutoConfig.from_pretrained, config.llm_model_id, "LLM (llm_model_id)", model)
        fetch_component(AutoConfig.from_pretrained, config.encoder_model_id, "Whisper (encoder_model_id)", model)


def looks_like_local_path(value: str) -> bool:
    """Whether a --model/--checkpoint value is meant as a folder, never a Hub id: it starts with '.', '/' or '~', or
    holds a separator no Hub id has (a backslash on Windows, a second '/'). `./run` matches the Hub id pattern."""
    separators = {os.sep, os.altsep} - {None, "/"}
    return value.startswith((".", "/", "~")) or any(s in value for s in separators) or value.count("/") > 1


def missing_folder(flag: str, value: str, what: str = "folder") -> str:
    path = Path(value).expanduser().resolve()
    return f"{flag} {value}: no such {what} ({'not a folder' if path.exists() else 'no such folder'}: {path})"


def check_local_folder(flag: str, value: str) -> None:
    """Name a local-looking path that is no folder, before it is taken for a Hub id (and refused as one)."""
    if looks_like_local_path(value) and not Path(value).expanduser().is_dir():
        raise FileNotFoundError(missing_folder(flag, value))


def check_model_folder(model: str, path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(missing_folder("--model", model, "model folder"))
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--model {model}: the folder has no config.json, so it is not a saved model")
    try:
        json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"--model {model}: config.json is not a valid JSON object ({error})") from None


def check_audio_inputs(paths: list[str]) -> None:
    missing = [p for p in paths if not p.startswith(("http://", "https://")) and not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError("audio file not found: " + ", ".join(missing))


def build_conversation(args) -> list[dict]:
    transcripts = args.transcript or []
    if transcripts and len(transcripts) != len(args.audio):
        raise ValueError(f"got {len(transcripts)} --transcript values for {len(args.audio)} audio clips")
    items = [
        {"type": "audio", "path": path, **({"transcript": transcripts[i]} if transcripts else {})}
        for i, path in enumerate(args.audio)
    ]
    return audio_chat(items, args.prompt, args.system)


def generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample}
    if args.sample:
        kwargs.update(temperature=args.temperature, top_p=args.top_p)
    return kwargs


def parse_audio_policy(text: str | None) -> dict | None:
    """--audio-policy as a dict: one line for text that is not JSON, or JSON that is not an object."""
    if text is None:
        return None
    try:
        policy = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--audio-policy is not valid JSON ({error.msg}); give a JSON object") from None
    if not isinstance(policy, dict):
        raise ValueError(
            f"--audio-policy must be a JSON object of policy settings, e.g. '{{\"allow_urls\": false}}'; got {text!r}"
        )
    return policy


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        choices=sorted(QUANTIZATION_LIBRARIES),
        default=None,
        help="load the LLM and Whisper quantized (the connector stays float32): 4bit (bitsandbytes nf4), 8bit "
        f"(bitsandbytes LLM.int8), int8 (torchao weight-only); needs {QUANTIZATION_EXTRA}",
    )


def run_chat(args) -> int:
    audio_policy = parse_audio_policy(args.audio_policy)
    check_audio_inputs(args.audio)
    resolve_device(args.device)  # a device this machine lacks is named before anything is fetched
    check_model(args.model)
    conversation = build_conversation(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    kwargs = generation_kwargs(args)
    if audio_policy is not None:
        kwargs["audio_policy"] = audio_policy
    if args.stream:
        result = stream_answer(pipe, conversation, kwargs)
    else:
        result = pipe(conversation, **kwargs)
        sys.stdout.write(result["generated_text"] + "\n")
    if args.verbose:
        for path, transcript in zip(args.audio, result["transcripts"]):
            sys.stderr.write(f"[transcript] {path}: {transcript}\n")
    return 0


def stream_answer(pipe, conversation: list[dict], kwargs: dict) -> dict:
    """Print tokens as `generate` produces them; return the pipeline's full result."""
    stream = AnswerStream(pipe, conversation, kwargs)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return stream.result


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_eval_modes(parser)
    add_eval_model_arguments(parser)
    add_benchmark_data_arguments(parser)
    add_preset_arguments(parser)
    add_retention_arguments(parser)
    return parser


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    """A benchmark of the paper's table by name, and the LLM judge some of them are scored by."""
    preset = parser.add_argument_group("benchmark presets (with --data-file or --dataset)")
    preset.add_argument(
        "--benchmark",
        choices=sorted(ev.PRESETS),
        help="the benchmark's own layout, prompt, scorer and aggregation (see docs/evaluation.md); without it the "
        "records are read as MMAU-style questions",
    )
    preset.add_argument("--subset", help="SAKURA: single or multi (hop); VoiceBench: the subset; Dynamic-SUPERB: task")
    preset.add_argument("--judge-base-url", help="OpenAI-compatible API root of the LLM judge (SAKURA, VoiceBench ...)")
    preset.add_argument("--judge-model", help="the judge model's name at --judge-base-url (e.g. gpt-4o-2024-11-20)")
    preset.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable with its key")


def add_eval_modes(parser: argparse.ArgumentParser) -> None:
    """The one required mode: a benchmark (from a file or a dataset), a re-score, or the retention check."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--data-file", help="benchmark records: JSON list (MMAU layout) or JSONL")
    mode.add_argument("--dataset", help="benchmark as a datasets Hub id or save_to_disk folder")
    mode.add_argument(
        "--rescore", metavar="PREDICTIONS", help="re-score a predictions.jsonl (or a reference MMAU results .json)"
    )
    mode.add_argument("--retention", action="store_true", help="knowledge-retention check against the base LLM")
    mode.add_argument(
        "--combine",
        nargs="+",
        metavar="RESULTS_JSON",
        help="with --benchmark: the headline over several runs (SAKURA's tracks, VoiceBench's subsets, "
        "Speech-IFEval's parts, Dynamic-SUPERB's tasks); written to --output-dir/combined.json",
    )


def add_eval_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, where results go, and how the model runs."""
    parser.add_argument("--model", help="Desta folder or Hub id (benchmark and retention modes)")
    parser.add_argument(
        "--output-dir", default=DEFAULT_EVAL_OUTPUT_DIR, help=f"where results go (default: {DEFAULT_EVAL_OUTPUT_DIR})"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"greedy generation length (default: {ev.BENCHMARK_MAX_NEW_TOKENS} for benchmarks, as the "
        f"reference; {ev.RETENTION_MAX_NEW_TOKENS} for retention)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    add_quantize_argument(parser)
    parser.add_argument(
        "--mcq-scoring",
        choices=["generate", "likelihood"],
        default="generate",
        help="multiple choice by generation and MMAU's string match (default), or by the choice whose answer text "
        "'The correct answer is: \"CHOICE\"' has the highest summed log-probability after the same prompt (model "
        "in this process only, not with --base-url)",
    )
    parser.add_argument(
        "--base-url",
        help="benchmark a DeSTA served behind this OpenAI-compatible API root (e.g. vLLM with this package's plugin: "
        "http://127.0.0.1:8000/v1) instead of loading it here; --model is the served model's name (a local folder "
        "name also gives the tokenizer that decodes answers as the pipeline does). Key: $OPENAI_API_KEY",
    )


def add_benchmark_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Which records, their columns and their format (benchmark mode)."""
    data = parser.add_argument_group("benchmark data")
    data.add_argument("--split", default="test", help="dataset split (default: test)")
    data.add_argument("--dataset-config", default=None, help="dataset configuration name")
    data.add_argument("--audio-root", help="folder relative audio paths start from (default: the data file's folder)")
    data.add_argument(
        "--format", default="auto", choices=["auto", "mcq", "open", "asr"], help="auto: mcq when records have choices"
    )
    data.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    data.add_argument("--id-column", default="id")
    data.add_argument("--question-column", default="question")
    data.add_argument("--choices-column", default="choices")
    data.add_argument("--answer-column", default="answer")
    data.add_argument(
        "--audio-column", default=None, help="default: the first of audio_id, audio, audio_path, path, file"
    )
    data.add_argument("--transcript-column", default=None, help="use these transcripts instead of Whisper's ASR")
    data.add_argument(
        "--category-columns",
        nargs="+",
        default=None,
        help="fields to break results down by (default: task, category, sub-category, difficulty where present)",
    )
    data.add_argument("--no-asr", action="store_true", help="give every clip an empty transcript (connector only)")
    data.add_argument(
        "--system-prompt",
        default=None,
        help=f"default: the reference's MMAU prompt for mcq, {DEFAULT_SYSTEM_PROMPT!r} otherwise",
    )


def add_retention_arguments(parser: argparse.ArgumentParser) -> None:
    """The base LLM and prompts of the knowledge-retention check."""
    retention = parser.add_argument_group("knowledge retention")
    retention.add_argument(
        "--base-llm", default=None, help="base LLM folder or Hub id (default: rebuilt from the model's own LLM weights)"
    )
    retention.add_argument(
        "--retention-prompts",
        default=None,
        help="prompts .txt (one per line) or .jsonl with prompt/reference (default: built-in)",
    )


def benchmark_run_options(args: argparse.Namespace) -> dict:
    """The options every benchmark run takes from the command line, preset or not."""
    return {
        "data_file": args.data_file,
        "dataset": args.dataset,
        "split": args.split,
        "audio_root": args.audio_root,
        "limit": args.limit,
        "device": args.device,
        "dtype": args.dtype,
        "quantize": args.quantize,
        "base_url": args.base_url,
        "batch_size": args.batch_size,
        "no_asr": args.no_asr,
        "mcq_scoring": args.mcq_scoring,
    }


def run_preset(args: argparse.Namespace) -> int:
    """`eval --benchmark NAME`: the preset run, its results table on stdout."""
    if (args.judge_base_url is None) != (args.judge_model is None):
        raise ValueError("--judge-base-url and --judge-model go together")
    judge = None
    if args.judge_base_url:
        judge = ev.JudgeSettings(args.judge_base_url, args.judge_model, args.judge_api_key_env)
    ev.evaluate_preset(
        args.benchmark,
        args.model,
        args.output_dir,
        subset=args.subset,
        judge=judge,
        max_new_tokens=args.max_new_tokens,
        system_prompt=args.system_prompt,
        **benchmark_run_options(args),
    )
    sys.stdout.write((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))  # as written by the run
    return 0


def run_combine(args: argparse.Namespace) -> int:
    """`eval --combine RESULTS ... --benchmark NAME`: the headline over runs, as JSON on stdout and in a file."""
    if not args.benchmark:
        raise ValueError("--combine needs --benchmark NAME (the preset the runs belong to)")
    combined = ev.combine_runs(args.benchmark, args.combine)
    text = json.dumps(combined, indent=2, ensure_ascii=False) + "\n"
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "combined.json").write_text(text)
    sys.stdout.write(text)
    return 0


def check_model_source(args: argparse.Namespace) -> None:
    """The model to evaluate and the options that must agree with where it runs (here, or at --base-url)."""
    if not args.model:
        raise ValueError("--model is required to run a benchmark or the retention check")
    if args.base_url and args.quantize:
        raise ValueError(
            f"--quantize {args.quantize} loads the model here; a model served at --base-url is quantized by its "
            "server (e.g. vLLM's --quantization): drop --quantize, or drop --base-url to run it here"
        )
    if args.base_url and args.retention:
        raise ValueError("--base-url serves benchmarks only; the retention check needs the model's weights here")
    if args.base_url and args.mcq_scoring == "likelihood":
        raise ValueError(
            "--mcq-scoring likelihood needs the model's log-probabilities in this process; drop --base-url to score a "
            "served model's choices by likelihood"
        )
    if not args.base_url:
        resolve_device(args.device)
        check_model(args.model)


def run_eval(args: argparse.Namespace) -> int:
    """Run the mode `args` selects, write JSON + Markdown into --output-dir, print the Markdown table."""
    logging.getLogger("desta_audio.evaluation").setLevel(logging.INFO)
    if args.combine:
        return run_combine(args)
    if args.rescore and args.benchmark:
        results = ev.rescore_preset(args.benchmark, args.rescore, args.output_dir)
        sys.stdout.write(ev.results_markdown(results))
        return 0
    if args.rescore:
        results = ev.rescore(args.rescore, args.output_dir, args.category_columns)
        sys.stdout.write(ev.results_markdown(results))
        return 0
    check_model_source(args)
    if args.retention:
        model, tokenizer = ev.load_model_and_tokenizer(args.model, args.device, args.dtype, args.quantize)
        report = ev.knowledge_retention(
            model,
            tokenizer,
            base_llm=args.base_llm,
            prompts=ev.load_retention_prompts(args.retention_prompts),
            max_new_tokens=args.max_new_tokens or ev.RETENTION_MAX_NEW_TOKENS,
            batch_size=args.batch_size,
        )
        ev.write_retention(report, args.output_dir)
        sys.stdout.write(ev.retention_markdown(report))
        return 0
    if args.benchmark:
        return run_preset(args)
    columns = ev.BenchmarkColumns(
        id=args.id_column,
        question=args.question_column,
        choices=args.choices_column,
        answer=args.answer_column,
        audio=args.audio_column,
        transcript=args.transcript_column,
        categories=args.category_columns,
    )
    results = ev.evaluate_benchmark(
        args.model,
        args.output_dir,
        dataset_config=args.dataset_config,
        columns=columns,
        fmt=args.format,
        max_new_tokens=args.max_new_tokens or ev.BENCHMARK_MAX_NEW_TOKENS,
        system_prompt=args.system_prompt,
        group_by=args.category_columns,
        **benchmark_run_options(args),
    )
    sys.stdout.write(ev.results_markdown(results))
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="Hub id or folder in the released format")
    parser.add_argument("--output", required=True, help="folder to write the converted checkpoint into")
    parser.add_argument("--push-to-hub", metavar="REPO", help="publish the converted folder to this Hub repo")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="weights dtype (default bfloat16)")
    parser.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    parser.add_argument(
        "--facts", type=Path, help="YAML/JSON model-card facts (default: the release's, for the release)"
    )
    return parser


def run_convert(args: argparse.Namespace) -> int:
    check_local_folder("--checkpoint", args.checkpoint)
    logging.getLogger("desta_audio").setLevel(logging.INFO)
    facts = yaml.safe_load(read_text(args.facts)) if args.facts else None
    output = convert(
        args.checkpoint,
        args.output,
        dtype=DTYPES[args.dtype],
        max_shard_size=args.max_shard_size,
        facts=facts,
        repo_id=args.push_to_hub,
    )
    if args.push_to_hub:
        publish(output, args.push_to_hub)
    return 0


def run_smoke_qa(args: argparse.Namespace) -> int:
    sys.stdout.write(f"{make_smoke_qa(args.output_dir)}\n")
    return 0


def add_lab_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("output_dir", help="folder for train/ and probe/ (see docs/lab.md)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="which splits to write")
    for split in SPLITS:
        parser.add_argument(
            f"--{split}-clips", type=int, default=DEFAULT_CLIPS[split], help=f"clips in {split}/ (default: %(default)s)"
        )
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same clips (default: 0)")
    parser.add_argument("--jobs", type=int, default=2, help="synthesizer processes at once (default: 2)")
    return parser


def run_lab(args: argparse.Namespace) -> int:
    """`desta-audio lab OUT`: the splits' folders, then one line per split on stdout."""
    logging.getLogger("desta_audio.lab").setLevel(logging.INFO)
    clips = {split: getattr(args, f"{split}_clips") for split in SPLITS}
    for manifest in make_lab(args.output_dir, tuple(args.splits), clips, args.seed, args.jobs):
        folder = Path(args.output_dir) / manifest["split"]
        sys.stdout.write(f"{folder}: {manifest['clips']} clips, {manifest['records']} records\n")
    return 0


def run_checked_demo(args: argparse.Namespace) -> int:
    """`run_demo`, once --port is a port number (the socket's OverflowError names no flag)."""
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: ports must be 1-65535")
    return run_demo(args)


def run_build(args) -> int:
    """`desta-audio build`: `build_dataset.py` as a subcommand (one library behind both)."""
    logging.getLogger().setLevel(args.log_level.upper())
    return run_dataset_build(BuildArguments.from_namespace(args))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    debug = args.debug or getattr(args, "verbose", False)  # chat's -v asks for details too
    return report_errors("desta-audio", lambda: args.handler(args), debug)


if __name__ == "__main__":
    sys.exit(main())
