"""`python -m processing.evaluate ...`, the same command as `desta-audio eval ...` (see docs/evaluation.md).

Three modes:
    --data-file FILE | --dataset NAME_OR_DIR    run a model over an audio QA benchmark and score it
    --rescore PREDICTIONS                       score saved predictions again, without a model
    --retention                                 compare the model with its base LLM on text-only prompts

The arguments live here, the work in `processing.evaluation`.
"""

import argparse
import logging
import sys

from . import evaluation

DEFAULT_OUTPUT_DIR = "eval_results"


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--data-file", help="benchmark records: JSON list (MMAU layout) or JSONL")
    mode.add_argument("--dataset", help="benchmark as a datasets Hub id or save_to_disk folder")
    mode.add_argument(
        "--rescore", metavar="PREDICTIONS", help="re-score a predictions.jsonl (or a reference MMAU results .json)"
    )
    mode.add_argument("--retention", action="store_true", help="knowledge-retention check against the base LLM")

    parser.add_argument("--model", help="Desta folder or Hub id (benchmark and retention modes)")
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"where results go (default: {DEFAULT_OUTPUT_DIR})"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"greedy generation length (default: {evaluation.BENCHMARK_MAX_NEW_TOKENS} for benchmarks, as the "
        f"reference; {evaluation.RETENTION_MAX_NEW_TOKENS} for retention)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])

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
        help="default: the reference's MMAU prompt for mcq, 'Focus on the audio clips and instructions.' otherwise",
    )

    retention = parser.add_argument_group("knowledge retention")
    retention.add_argument(
        "--base-llm", default=None, help="base LLM folder or Hub id (default: rebuilt from the model's own LLM weights)"
    )
    retention.add_argument(
        "--retention-prompts",
        default=None,
        help="prompts .txt (one per line) or .jsonl with prompt/reference (default: built-in)",
    )
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run the mode `args` selects, write JSON + Markdown into --output-dir, print the Markdown table."""
    logging.getLogger(evaluation.__name__).setLevel(logging.INFO)
    if args.rescore:
        results = evaluation.rescore(args.rescore, args.output_dir, args.category_columns)
        sys.stdout.write(evaluation.results_markdown(results))
        return 0
    if not args.model:
        raise ValueError("--model is required to run a benchmark or the retention check")
    if args.retention:
        model, tokenizer = evaluation.load_model_and_tokenizer(args.model, args.device, args.dtype)
        report = evaluation.knowledge_retention(
            model,
            tokenizer,
            base_llm=args.base_llm,
            prompts=evaluation.load_retention_prompts(args.retention_prompts),
            max_new_tokens=args.max_new_tokens or evaluation.RETENTION_MAX_NEW_TOKENS,
            batch_size=args.batch_size,
        )
        evaluation.write_retention(report, args.output_dir)
        sys.stdout.write(evaluation.retention_markdown(report))
        return 0
    columns = evaluation.ColumnMap(
        id=args.id_column,
        question=args.question_column,
        choices=args.choices_column,
        answer=args.answer_column,
        audio=args.audio_column,
        transcript=args.transcript_column,
        categories=args.category_columns,
    )
    results = evaluation.evaluate_benchmark(
        args.model,
        args.output_dir,
        data_file=args.data_file,
        dataset=args.dataset,
        split=args.split,
        dataset_config=args.dataset_config,
        audio_root=args.audio_root,
        columns=columns,
        fmt=args.format,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens or evaluation.BENCHMARK_MAX_NEW_TOKENS,
        system_prompt=args.system_prompt,
        no_asr=args.no_asr,
        group_by=args.category_columns,
    )
    sys.stdout.write(evaluation.results_markdown(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Same as `desta-audio eval ARGS`."""
    from .cli import main as cli_main

    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
