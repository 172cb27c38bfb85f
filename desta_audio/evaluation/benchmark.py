"""Benchmark runs: every item is asked through the `audio-text-to-text` pipeline (greedy, batched) and its answer
appended to `predictions.jsonl` batch by batch. Scores are always computed from that file alone, so `rescore`
reproduces a run's numbers without generating, and a run that stopped resumes where it left off.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from ..files import JsonlWriter, read_json, write_jsonl_atomic
from ..runtime import chunks, load_pipeline
from ..serving.served_pipeline import ServedPipeline
from .data import (
    BenchmarkColumns,
    EvalItem,
    build_conversation,
    build_items,
    check_audio_files,
    detect_format,
    item_fingerprint,
    load_records,
    prediction_record,
    resolve_system_prompt,
)
from .judge import JudgeSettings, judge_model_of, judge_records, saved_replies
from .likelihood import SCORING_MODES, choice_outputs
from .presets import own_output_records, preset
from .scoring import RESULTS_JSON, load_prediction_records, read_predictions, score_predictions, write_results

logger = logging.getLogger(__name__)

FORMATS = ("mcq", "open", "asr")
PRESET_FORMATS = ("speech-ifeval", "voicebench", "judged")  # set by benchmark presets, never given by hand
BENCHMARK_MAX_NEW_TOKENS = 512  # the reference's MMAU setting
PREDICTIONS_FILE = "predictions.jsonl"
STALE_PREDICTIONS_FILE = "predictions.stale.jsonl"
RUN_CONFIG_FILE = "run_config.json"


def check_run_config(output_dir: Path, config: dict) -> None:
    """Save the settings that shape answers; refuse to resume into a folder answered with other settings, where
    old and new predictions would silently mix."""
    path = output_dir / RUN_CONFIG_FILE
    if path.exists() and (output_dir / PREDICTIONS_FILE).exists():
        saved = json.loads(path.read_text())
        changed = {key: (saved.get(key), value) for key, value in config.items() if saved.get(key) != value}
        if changed:
            raise ValueError(
                f"{output_dir} holds predictions made with other settings (saved, now): {changed}. Use another output "
                f"folder, or delete {RUN_CONFIG_FILE} there if mixing is intended."
            )
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def current_predictions(predictions_path: Path, items: Sequence[EvalItem]) -> set[str]:
    """Ids answered for the items as they are now. Predictions made for an item whose question, choices, answer
    or audio have changed since (e.g. a fixed answer key) move to predictions.stale.jsonl and are asked again."""
    fingerprints = {item.id: item_fingerprint(item) for item in items}
    saved = read_predictions(predictions_path)
    stale = [r for r in saved if r["id"] in fingerprints and r.get("item_sha256") != fingerprints[r["id"]]]
    if stale:
        logger.warning(
            "%d saved prediction(s) in %s were made for other data (answer key, question, choices or audio changed); "
            "asking them again (old ones kept in %s)",
            len(stale),
            predictions_path,
            STALE_PREDICTIONS_FILE,
        )
        with JsonlWriter(predictions_path.with_name(STALE_PREDICTIONS_FILE)) as sink:
            sink.write(stale)
        stale_ids = {r["id"] for r in stale}
        write_jsonl_atomic(predictions_path, [r for r in saved if r["id"] not in stale_ids])
    return {r["id"] for r in saved if fingerprints.get(r["id"]) == r.get("item_sha256")}


def run_benchmark(
    pipe,
    items: Sequence[EvalItem],
    output_dir: str | os.PathLike,
    fmt: str = "mcq",
    batch_size: int = 8,
    max_new_tokens: int = BENCHMARK_MAX_NEW_TOKENS,
    system_prompt: str | None = None,
    no_asr: bool = False,
    group_by: Sequence[str] | None = None,
    score=None,
    mcq_scoring: str = "generate",
) -> dict:
    """Ask every item not yet in `output_dir/predictions.jsonl` (greedy), append each batch's answers, then score
    (`score_predictions`, or `score(records)` for a preset that judges or aggregates its own way).

    `mcq_scoring="likelihood"` answers each multiple-choice item with its most likely choice instead of generating
    (`likelihood.choice_outputs`; the model must run in this process). Items already answered there are never asked
    again, so an interrupted run resumes by running it again. The results (also written as `results.json` /
    `results.md`) cover this run's items only.
    """
    if fmt not in FORMATS + PRESET_FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    check_mcq_scoring(mcq_scoring, pipe, fmt, items)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = output_dir / PREDICTIONS_FILE
    check_run_config(
        output_dir,
        {
            "model": getattr(getattr(pipe, "model", None), "name_or_path", None),
            "format": fmt,
            "system_prompt": resolve_system_prompt(fmt, system_prompt),
            "max_new_tokens": max_new_tokens,
            "no_asr": no_asr,
            # only when set: folders answered before the option existed stay valid
            **({"mcq_scoring": mcq_scoring} if mcq_scoring != "generate" else {}),
        },
    )
    done = current_predictions(predictions_path, items)
    todo = [item for item in items if item.id not in done]
    if done:
        logger.info(
            "resuming: %d of %d items already answered in %s", len(items) - len(todo), len(items), predictions_path
        )
    check_audio_files(todo)
    with (
        JsonlWriter(predictions_path) as sink,
        tqdm(total=len(todo), unit="item", desc="evaluating") as progress,
    ):
        for batch in chunks(todo, batch_size):
            conversations = [build_conversation(item, fmt, system_prompt, no_asr) for item in batch]
            if mcq_scoring == "likelihood":
                outputs = choice_outputs(pipe, conversations, [item.choices for item in batch])
            else:
                outputs = pipe(conversations, batch_size=len(batch), max_new_tokens=max_new_tokens, do_sample=False)
            sink.write(prediction_record(item, fmt, output) for item, output in zip(batch, outputs, strict=True))
            progress.update(len(batch))
    wanted = {item.id for item in items}
    records = [r for r in read_predictions(predictions_path) if r["id"] in wanted]
    results = score_predictions(records, group_by) if score is None else score(records)
    write_results(results, output_dir)
    return results


def check_mcq_scoring(mcq_scoring: str, pipe, fmt: str, items: Sequence[EvalItem]) -> None:
    """Likelihood scoring needs multiple-choice items and the model's weights in this process."""
    if mcq_scoring not in SCORING_MODES:
        raise ValueError(f"--mcq-scoring must be one of {SCORING_MODES}; got {mcq_scoring!r}")
    if mcq_scoring == "generate":
        return
    if isinstance(pipe, ServedPipeline):
        raise ValueError(
            "--mcq-scoring likelihood needs the model's log-probabilities in this process; it cannot score a model "
            "served at --base-url. Drop --base-url (or use --mcq-scoring generate)."
        )
    if fmt != "mcq" or any(not item.choices for item in items):
        raise ValueError(f"--mcq-scoring likelihood scores multiple-choice items (with choices); this is {fmt!r} data")


def evaluate_benchmark(
    model,
    output_dir: str | os.PathLike,
    processor=None,
    data_file: str | os.PathLike | None = None,
    dataset=None,
    split: str = "test",
    dataset_config: str | None = None,
    audio_root: str | os.PathLike | None = None,
    columns: BenchmarkColumns | None = None,
    fmt: str = "auto",
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    base_url: str | None = None,
    **run_kwargs,
) -> dict:
    """Load the data and the model, then `run_benchmark`. Relative audio paths default to the data file's folder.

    With `base_url` (an OpenAI-compatible API root serving `model`, e.g. vLLM with this package's plugin) the items
    are asked there instead of in this process (`ServedPipeline`)."""
    columns = columns or BenchmarkColumns()
    records = load_records(data_file, dataset, split, dataset_config)
    if limit is not None:
        records = records.select(range(min(limit, len(records)))) if hasattr(records, "select") else records[:limit]
    if not len(records):
        raise ValueError("The benchmark has no records.")
    if audio_root is None and data_file is not None:
        audio_root = Path(data_file).parent
    items = build_items(records, columns, audio_root)
    fmt = detect_format(records[0], columns) if fmt == "auto" else fmt
    logger.info("%d %s items", len(items), fmt)
    pipe = served_pipeline(base_url, model) if base_url else load_pipeline(model, processor, device, dtype, quantize)
    return run_benchmark(pipe, items, output_dir, fmt, **run_kwargs)


def served_pipeline(base_url: str, model: str):
    """The served model, decoding answers with its tokenizer when `model` is a local folder that holds one."""
    tokenizer = None
    if os.path.isfile(os.path.join(str(model), "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    return ServedPipeline(base_url, str(model), tokenizer=tokenizer)


def evaluate_preset(
    name: str,
    model,
    output_dir: str | os.PathLike,
    processor=None,
    data_file: str | os.PathLike | None = None,
    dataset=None,
    subset: str | None = None,
    split: str = "test",
    audio_root: str | os.PathLike | None = None,
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    base_url: str | None = None,
    judge: JudgeSettings | None = None,
    max_new_tokens: int | None = None,
    system_prompt: str | None = None,
    **run_kwargs,
) -> dict:
    """One benchmark of the paper's table (`presets.PRESETS`): its data, prompts, scorer and aggregation.

    `judge` (an OpenAI-compatible endpoint and model) scores what the benchmark scores by an LLM; without it such a
    benchmark reports its offline proxy where it has one (SAKURA: MMAU's rule on the listed options; Dynamic-SUPERB:
    the same rule on the options its instruction lists), labelled as such in `results.json` (`scored_by`)."""
    spec = preset(name)
    records = _preset_records(data_file, dataset, split, subset if spec.subset_is_config else None)
    if limit is not None:
        records = records.select(range(min(limit, len(records)))) if hasattr(records, "select") else records[:limit]
    if audio_root is None and data_file is not None:
        audio_root = Path(data_file).parent
    items = spec.items(records, subset, audio_root)
    # Which data and subset a run scored, for headlines that span runs (`combine`: SAKURA's tracks, VoiceBench ...).
    run_identity = {"source": str(dataset if isinstance(dataset, (str, os.PathLike)) else data_file), "subset": subset}
    if not items:
        raise ValueError(f"The {name} data has no records.")
    logger.info("%s: %d items", name, len(items))
    pipe = served_pipeline(base_url, model) if base_url else load_pipeline(model, processor, device, dtype, quantize)

    def run(items: list[EvalItem], folder, subset: str | None) -> dict:
        return run_benchmark(
            pipe,
            items,
            folder,
            spec.fmt,
            max_new_tokens=max_new_tokens or spec.max_new_tokens,
            system_prompt=spec.system_prompt if system_prompt is None else system_prompt,
            group_by=list(spec.group_by),
            score=lambda predictions: {
                **score_preset(spec, predictions, folder, judge),
                **run_identity,
                "subset": subset,
            },
            **run_kwargs,
        )

    return spec.passes(run, items, output_dir) if spec.passes else run(items, output_dir, subset)


def _preset_records(data_file, dataset, split: str, config: str | None):
    """`load_records`, plus a JSON object keyed by audio path (SAKURA's `metadata.json`) as one keyed record."""
    if data_file is not None and str(data_file).endswith(".json") and Path(data_file).is_file():
        content = read_json(data_file)
        if isinstance(content, dict):
            return [content]
    return load_records(data_file, dataset, split, config)


def score_preset(spec, records: list[dict], output_dir, judge: JudgeSettings | None) -> dict:
    """Score a preset's predictions: with its judge's verdicts when it has a judge and one is given (asking only what
    `judgements.jsonl` does not hold yet), else offline."""
    if spec.judging is None or judge is None:
        return _scored(spec, records, None, None)
    settings = replace(
        judge, samples=spec.judging.samples, temperature=spec.judging.temperature, top_p=spec.judging.top_p
    )
    return _scored(spec, records, judge_records(records, spec.judging.messages, settings, output_dir), judge.model)


def rescore_preset(name: str, predictions_path: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> dict:
    """Score saved predictions of a preset again, with no model and no judge: the verdicts saved in
    `judgements.jsonl` beside them count (items never judged are scored as unjudged). Also reads the benchmark's
    own output files where the preset knows their layout (`presets.own_output_records`)."""
    spec = preset(name)
    folder = Path(predictions_path).parent
    records = own_output_records(spec.name, predictions_path) or load_prediction_records(predictions_path)
    replies = saved_replies(records, spec.judging.messages, folder) if spec.judging else {}
    results = _scored(spec, records, replies or None, judge_model_of(folder) if replies else None)
    previous = folder / RESULTS_JSON
    if previous.is_file():  # keep the run's identity (`source`, `subset`) for `combine`
        saved = json.loads(previous.read_text(encoding="utf-8"))
        results.update({key: saved[key] for key in ("source", "subset") if key in saved})
    write_results(results, output_dir or folder)
    return results


def _scored(spec, records: list[dict], replies: dict[str, list[str]] | None, judge_model: str | None) -> dict:
    group_by = list(spec.group_by)
    if replies is None and spec.offline_score is not None:
        return {**spec.offline_score(records), "benchmark": spec.name, "scored_by": "offline"}
    if replies is None:
        if spec.offline_verdict is not None:
            records = [{**r, "verdict": spec.offline_verdict(r)} for r in records]
        results = score_predictions([{**r, "format": spec.fmt} for r in records], group_by)
        proxy = spec.judging is not None and spec.fmt in ("mcq", "judged")  # SAKURA, Dynamic-SUPERB
        return {**results, "benchmark": spec.name, "scored_by": "offline proxy" if proxy else "offline"}
    judged = [{**r, "verdict": spec.judging.verdict(replies[r["id"]], r)} if r["id"] in replies else r for r in records]
    fmt = "judged" if spec.fmt in ("mcq", "judged") else spec.fmt
    results = score_predictions([{**r, "format": fmt} for r in judged], group_by)
    comparable = spec.judging.model is not None and judge_model == spec.judging.model
    judge = {
        "model": judge_model,
        "protocol_model": spec.judging.model,
        "prompt": spec.judging.prompt,
        "comparable_with_paper": comparable,
    }
    return {**results, "benchmark": spec.name, "scored_by": f"judge {judge_model}", "judge": judge}
