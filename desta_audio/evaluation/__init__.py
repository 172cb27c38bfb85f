"""Evaluation: audio QA benchmarks (MMAU-style multiple choice, open answers, ASR), scoring, knowledge retention."""

from .benchmark import BENCHMARK_MAX_NEW_TOKENS, evaluate_benchmark, run_benchmark
from .data import BenchmarkColumns, EvalItem, build_conversation, build_items, load_records, mcq_question
from .retention import (
    RETENTION_MAX_NEW_TOKENS,
    knowledge_retention,
    load_model_and_tokenizer,
    load_retention_prompts,
    rebuild_base_llm,
    retention_markdown,
    write_retention,
)
from .scoring import (
    mmau_string_match,
    open_answer_match,
    read_predictions,
    rescore,
    results_markdown,
    score_predictions,
    strip_answer_prefix,
    word_error_rate,
)

__all__ = [
    "BENCHMARK_MAX_NEW_TOKENS",
    "RETENTION_MAX_NEW_TOKENS",
    "BenchmarkColumns",
    "EvalItem",
    "build_conversation",
    "build_items",
    "evaluate_benchmark",
    "knowledge_retention",
    "load_model_and_tokenizer",
    "load_records",
    "load_retention_prompts",
    "mcq_question",
    "mmau_string_match",
    "open_answer_match",
    "read_predictions",
    "rebuild_base_llm",
    "rescore",
    "results_markdown",
    "retention_markdown",
    "run_benchmark",
    "score_predictions",
    "strip_answer_prefix",
    "word_error_rate",
    "write_retention",
]
