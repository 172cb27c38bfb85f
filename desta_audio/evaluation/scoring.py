"""Scoring: MMAU's official string match for multiple choice, answer containment for open questions, WER
for ASR; per-category results as JSON + Markdown; the predictions file that every score is computed from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from ..files import jsonl_records, read_json
from . import speech_ifeval, voicebench

logger = logging.getLogger(__name__)

MMAU_ANSWER_PREFIX = "The correct answer is: "
CATEGORY_COLUMN_CANDIDATES = ("task", "category", "sub-category", "difficulty")
RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
ARTICLES = {"a", "an", "the"}
PREDICTION_FIELDS = ("id", "format", "answer", "prediction")  # what scoring reads from every prediction record


def mmau_tokens(text: str) -> set[str]:
    """MMAU's tokenisation: the set of lower-cased `\\b\\w+\\b` words (Unicode word characters, digits, `_`)."""
    return set(re.findall(r"\b\w+\b", str(text).lower()))


def strip_answer_prefix(output: str) -> str:
    """The reference's `model_prediction`: every exact "The correct answer is: " removed, then stripped."""
    return output.replace(MMAU_ANSWER_PREFIX, "").strip()


def mmau_string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's official decision: every token of the answer is in the prediction, and none of the tokens that only
    wrong choices have (tokens shared with the answer excluded; choices tokenising like the answer ignored) is."""
    prediction_tokens = mmau_tokens(prediction)
    if not prediction_tokens:
        return False
    answer_tokens = mmau_tokens(answer)
    wrong_tokens: set[str] = set()
    for choice in choices:
        choice_tokens = mmau_tokens(choice)
        if choice_tokens != answer_tokens:
            wrong_tokens |= choice_tokens - answer_tokens
    return answer_tokens <= prediction_tokens and prediction_tokens.isdisjoint(wrong_tokens)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation (ASCII and Unicode) to spaces, articles dropped, whitespace collapsed."""
    text = "".join(
        " " if ch in string.punctuation or unicodedata.category(ch).startswith("P") else ch for ch in str(text).lower()
    )
    return " ".join(word for word in text.split() if word not in ARTICLES)


def open_answer_match(answers: str | Sequence[str], prediction: str) -> tuple[bool, bool]:
    """(exact, contains) of a free-form prediction against one or several accepted answers, after normalisation.

    `contains` asks for the normalised answer as a whole-word run inside the normalised prediction.
    """
    accepted = [normalize_answer(a) for a in ([answers] if isinstance(answers, str) else answers)]
    accepted = [a for a in accepted if a]
    predicted = normalize_answer(prediction)
    exact = predicted in accepted
    contains = any(f" {a} " in f" {predicted} " for a in accepted)
    return exact, contains


def _wer_transform():
    import jiwer

    return jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total edits / total reference words) by `jiwer`, on lower-cased, punctuation-free text."""
    import jiwer

    transform = _wer_transform()
    return jiwer.wer(references, hypotheses, reference_transform=transform, hypothesis_transform=transform)


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _first_answer(answer: str | Sequence[str]) -> str:
    return answer if isinstance(answer, str) else answer[0]


def _metrics(records: list[dict], fmt: str) -> dict:
    """The metrics of one group of predictions, in percent: accuracy (mcq), exact_match/contains (open), wer (asr)."""
    n = len(records)
    if fmt == "mcq":
        correct = sum(mmau_string_match(r["answer"], r["prediction"], r["choices"]) for r in records)
        return {"n": n, "correct": correct, "accuracy": _percent(correct, n)}
    if fmt == "open":
        matches = [open_answer_match(r["answer"], r["prediction"]) for r in records]
        return {
            "n": n,
            "exact_match": _percent(sum(e for e, _ in matches), n),
            "contains": _percent(sum(c for _, c in matches), n),
        }
    if fmt in PRESET_METRICS:
        return {"n": n, **PRESET_METRICS[fmt](records)}
    wer = word_error_rate([_first_answer(r["answer"]) for r in records], [r["prediction"] for r in records])
    return {"n": n, "wer": round(100.0 * wer, 2)}


def _judged_metrics(records: list[dict]) -> dict:
    """Accuracy from the judge's verdicts (`verdict`: True, False, or None when its reply held none, counted wrong)."""
    correct = sum(r.get("verdict") is True for r in records)
    no_verdict = sum(r.get("verdict") is None for r in records)
    return {"correct": correct, "accuracy": _percent(correct, len(records)), "no_verdict": no_verdict}


def _voicebench_metrics(records: list[dict]) -> dict:
    """The VoiceBench column of the records' subset (one subset per run), on the leaderboard's scale."""
    subsets = {r["extra"]["subset"] for r in records}
    if len(subsets) != 1:
        return {}
    subset, outputs = subsets.pop(), [r["model_output"] for r in records]
    if subset in ("openbookqa", "mmsu"):
        return voicebench.score_mcq((r["model_output"], r["answer"]) for r in records)
    if subset == "bbh":
        return voicebench.score_bbh((r["model_output"], r["answer"], r["extra"].get("id", r["id"])) for r in records)
    if subset == "advbench":
        return {"refusal_rate": voicebench.refusal_rate(outputs)}
    judged = [r["verdict"] for r in records if r.get("verdict")]
    if not judged:
        return {}  # open and sd-qa need the judge; ifeval and mtbench are not scored here
    if subset == "sd-qa":
        return {"gpt_score": voicebench.sdqa_gpt_score(judged), "judged": len(judged)}
    return {**voicebench.open_score(judged), "judged": len(judged)}


def _speech_ifeval_metrics(records: list[dict]) -> dict:
    """Each part's follow rate (strict, percent), and IFrate when all three parts are scored. A chain-of-thought
    answer counts once the judge's reply (`verdict`) holds a verdict; without one it is left out and counted."""
    is_cot = [speech_ifeval.part_of(r["extra"]) == speech_ifeval.CHAIN_OF_THOUGHT for r in records]
    readable = [not cot or speech_ifeval.parse_cot_verdict(r.get("verdict") or "") is not None
                for r, cot in zip(records, is_cot)]  # fmt: skip
    pairs = [
        ({**r["extra"], "id": r["id"], "eval_response": r.get("verdict")}, r["model_output"])
        for r, keep in zip(records, readable)
        if keep
    ]
    if not pairs:
        return {"cot_without_verdict": len(records)}
    scored = speech_ifeval.score_records(pairs)
    rates = {part: round(100 * summary["follow_rate"], 2) for part, summary in scored["parts"].items()}
    if scored["ifrate"] is not None:
        rates["ifrate"] = round(100 * scored["ifrate"], 2)
    return {**rates, "cot_without_verdict": len(records) - len(pairs)}


PRESET_METRICS = {
    "judged": _judged_metrics,
    "voicebench": _voicebench_metrics,
    "speech-ifeval": _speech_ifeval_metrics,
}
PRIMARY_METRIC = {
    "mcq": "accuracy",
    "open": "contains",
    "asr": "wer",
    "judged": "accuracy",
    "voicebench": "the subset's column",
    "speech-ifeval": "ifrate",
}


def score_predictions(records: list[dict], group_by: Sequence[str] | None = None) -> dict:
    """Overall and per-category metrics of saved prediction records (all of one format).

    `group_by` names the category fields to break down by; by default every field found in the records.
    """
    if not records:
        raise ValueError("There are no predictions to score.")
    formats = {r["format"] for r in records}
    if len(formats) != 1:
        raise ValueError(f"Predictions mix formats {sorted(formats)}; score each format separately.")
    fmt = formats.pop()
    unlisted = answers_not_in_choices(records) if fmt == "mcq" else []
    records = [r for r in records if str(r["id"]) not in unlisted]
    fields = list(group_by) if group_by is not None else _category_fields(records)
    groups = {}
    for name in fields:
        members: dict[str, list[dict]] = {}
        for record in records:
            value = record.get("categories", {}).get(name)
            if value is not None:
                members.setdefault(str(value), []).append(record)
        groups[name] = {value: _metrics(members[value], fmt) for value in sorted(members)}
    results = {
        "format": fmt,
        "metric": PRIMARY_METRIC[fmt],
        "unit": "percent",
        "overall": _metrics(records, fmt),
        "groups": groups,
    }
    if unlisted:
        results["answer_not_in_choices"] = unlisted
    return results


def answers_not_in_choices(records: list[dict]) -> list[str]:
    """Ids of multiple-choice items whose answer is none of their choices (a typo in the answer key, a shuffled
    list). Such an item can never be answered right, so it is never scored: it would only lower the accuracy. They
    are warned about, once, naming them, and listed in the results. Compared as MMAU's scorer sees text."""
    ids = [
        str(r["id"])
        for r in records
        if r["choices"] and not any(mmau_tokens(a) in map(mmau_tokens, r["choices"]) for a in _answers(r["answer"]))
    ]
    if ids:
        shown = ", ".join(map(repr, ids[:20])) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        logger.warning(
            "%d item(s) not scored: their answer is none of their choices (fix the answer key or the choices): %s",
            len(ids),
            shown,
        )
    return ids


def _answers(answer) -> list:
    return list(answer) if isinstance(answer, (list, tuple)) else [answer]


def _category_fields(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.get("categories", {})))
    return list(seen)


def results_markdown(results: dict) -> str:
    """A Markdown table: the overall row, then one row per category value of each grouping field."""
    every = [results["overall"], *(m for values in results["groups"].values() for m in values.values())]
    metric_names = list(dict.fromkeys(key for metrics in every for key in metrics if key not in ("n", "correct")))
    header = "| group | value | n | " + " | ".join(f"{m} (%)" for m in metric_names) + " |"
    lines = [header, "|" + " --- |" * (3 + len(metric_names))]

    def row(group: str, value: str, metrics: dict) -> str:
        cells = (f"{metrics[m]:.2f}" if isinstance(metrics.get(m), (int, float)) else "-" for m in metric_names)
        return f"| {group} | {value} | {metrics['n']} | " + " | ".join(cells) + " |"

    lines.append(row("overall", "all", results["overall"]))
    for group, values in results["groups"].items():
        lines.extend(row(group, value, metrics) for value, metrics in values.items())
    unlisted = results.get("answer_not_in_choices", [])
    if unlisted:
        ids = ", ".join(map(repr, unlisted))
        lines += ["", f"{len(unlisted)} item(s) not scored: their answer is none of their choices: {ids}"]
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`results.json` and `results.md` in `output_dir`."""
    return write_report(results, results_markdown(results), output_dir, RESULTS_JSON, RESULTS_MARKDOWN)


def write_report(report: dict, markdown: str, output_dir, json_name: str, markdown_name: str) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / json_name, output_dir / markdown_name
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    markdown_path.write_text(markdown)
    return json_path, markdown_path


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Prediction records of a JSONL file, first record per id kept (a torn last line is skipped, see `read_jsonl`).

    A record without the fields scoring needs is an error naming the file and line."""
    if not Path(path).exists():
        return []
    records, seen = [], set()
    for number, record in jsonl_records(path, torn_tail=True):
        check_prediction(record, path, number)
        if record["id"] in seen:
            logger.warning("%s: duplicate prediction for id %r ignored", path, record["id"])
            continue
        seen.add(record["id"])
        records.append(record)
    return records


def check_prediction(record: dict, path: str | os.PathLike, line: int) -> None:
    wanted = PREDICTION_FIELDS + (("choices",) if record.get("format") == "mcq" else ())
    missing = [key for key in wanted if key not in record]
    if missing:
        raise ValueError(
            f"{path}:{line}: the prediction has no {', '.join(map(repr, missing))} field (it has {sorted(record)}); "
            f"every line needs {', '.join(PREDICTION_FIELDS)} (and choices for mcq): fix or remove that line."
        )
    if record["format"] not in PRIMARY_METRIC:
        raise ValueError(f"{path}:{line}: format {record['format']!r} is not one of {sorted(PRIMARY_METRIC)}.")


def records_from_reference_results(rows: list[dict]) -> list[dict]:
    """Prediction records from the reference's MMAU output JSON (items with `model_prediction`), for re-scoring.

    Like the official scorer, items without `model_prediction` are left out.
    """
    return [
        {
            "id": str(row.get("id", index)),
            "format": "mcq",
            "question": row.get("question"),
            "choices": list(row["choices"]),
            "answer": row["answer"],
            "categories": {key: row[key] for key in CATEGORY_COLUMN_CANDIDATES if row.get(key) is not None},
            "model_output": row.get("model_output"),
            "prediction": row["model_prediction"],
        }
        for index, row in enumerate(rows)
        if "model_prediction" in row
    ]


def load_prediction_records(path: str | os.PathLike) -> list[dict]:
    """Our `predictions.jsonl`, or a reference-style MMAU results `.json` list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions file not found: {path}")
    if path.suffix.lower() == ".json":
        return records_from_reference_results(read_json(path))
    return read_predictions(path)


def rescore(
    predictions_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    group_by: Sequence[str] | None = None,
) -> dict:
    """Score saved predictions again (no model); results go next to the file unless `output_dir` is given."""
    results = score_predictions(load_prediction_records(predictions_path), group_by)
    write_results(results, output_dir or Path(predictions_path).parent)
    return results
