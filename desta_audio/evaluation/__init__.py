"""Evaluation: audio QA benchmarks (MMAU-style multiple choice, open answers, ASR), scoring, knowledge retention."""

import importlib

# Names are imported on first use (PEP 562), so that scoring saved predictions (`scoring`, plain Python) loads neither
# torch nor the pipeline that running a benchmark needs.
_EXPORTS = {
    "BENCHMARK_MAX_NEW_TOKENS": "benchmark",
    "BenchmarkColumns": "data",
    "EvalItem": "data",
    "JudgeSettings": "judge",
    "PRESETS": "presets",
    "evaluate_preset": "benchmark",
    "combine_runs": "combine",
    "rescore_preset": "benchmark",
    "RETENTION_MAX_NEW_TOKENS": "retention",
    "build_conversation": "data",
    "build_items": "data",
    "evaluate_benchmark": "benchmark",
    "knowledge_retention": "retention",
    "load_model_and_tokenizer": "retention",
    "load_records": "data",
    "load_retention_prompts": "retention",
    "mcq_question": "data",
    "mmau_string_match": "scoring",
    "open_answer_match": "scoring",
    "read_predictions": "scoring",
    "rebuild_base_llm": "retention",
    "rescore": "scoring",
    "results_markdown": "scoring",
    "retention_markdown": "retention",
    "run_benchmark": "benchmark",
    "score_predictions": "scoring",
    "strip_answer_prefix": "scoring",
    "word_error_rate": "scoring",
    "write_retention": "retention",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
