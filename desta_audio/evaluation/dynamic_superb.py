"""Dynamic-SUPERB Phase-2 scoring in plain Python (standard library only): judge prompt and verdict, offline proxy,
aggregation into per-domain and headline numbers. It runs no model and calls no API.

The benchmark. Dynamic-SUPERB Phase-2 (Huang et al., ICLR 2025, arXiv:2411.05361; github.com/dynamic-superb/
dynamic-superb) has 180 tasks for instruction-following speech, music and audio models. Every task is one Hugging
Face dataset, `DynamicSuperb/<Task>_<Dataset>`, used only as its `test` split, with the columns `file`, `audio`,
`instruction`, `label` (some tasks add a second clip `audio2` or extra text/label columns). A model gets the audio and
the instruction and writes free text. Classification tasks list their answers in the instruction: contributors are
told to append "The answer could be ..." (the task-submission guide), which `instruction_options` reads.

How a task declares its metric. Per the project site's task-submission guide, each instance has an `instance.json`
(`path`: the HF dataset, `version`: its commit, `metrics`: a list of metric names, plus `name`, `description`,
`keywords`) under `dynamic_superb/benchmark_tasks/<Task>/<Task>_<Dataset>/` in the official repository; the guide
links a `task_list.md` of all tasks, and the paper's appendix lists the 180 tasks. Scores are submitted per instance
as `{"name", "scores": [{"metric", "value", "version", "seen"}]}`.
The paper (section 4.2) scores three kinds of task:
- classification: an LLM referee (GPT-4o, temperature 0) reasons, then says whether the model's output matches the
  ground truth; the task's accuracy is the share judged correct. Here: `judge_prompt`, `parse_verdict`,
  `task_accuracy`, with `JUDGE_MODEL` and `JUDGE_SAMPLING`.
- regression: GPT-4o turns the free-text output into a number; outputs it cannot read are "N/A" and the N/A rate is
  reported beside the metric. Not implemented here.
- sequence generation (ASR, translation, captioning ...): the task's own metric (WER, CER, PER, BLEU ...) on the raw
  output. Not implemented here (`scoring.word_error_rate` covers WER).

Offline vs judge. `proxy_correct` scores a classification item without any LLM. It is a proxy: it is stricter than
a judge on hedged or verbose answers ("yes, there is no noise" holds the wrong option "no") and cannot read
paraphrases, so its accuracies are indicative and not comparable with the paper's. Numbers comparable with
published ones need the judge: send `judge_prompt(...)` to `JUDGE_MODEL` with `JUDGE_SAMPLING`, read each reply with
`parse_verdict`.

What the sources left open (read them before comparing numbers):
- The judge prompt. The official repository (where the prompt text lives) and the paper's full text could not be
  read while writing this module: the stores it was written from hold only the project site
  (dynamic-superb/dynamic-superb.github.io: task and score submission guides) and summaries of the paper's section
  4.2. `JUDGE_PROMPT_TEMPLATE` is therefore OUR wording of the protocol the paper describes (reason first, then a
  binary verdict), not the official text; `judge_prompt` takes the official template through `template` once you
  have it (fields `{instruction}`, `{label}`, `{response}`), and `parse_verdict` reads only this module's verdict
  line. The judge's GPT-4o snapshot is not stated in what could be read.
- The single number. As far as could be verified, the Phase-2 paper reports no overall score: it compares models per
  task and per domain (Fig. 3; a summary of the paper describes the comparison as relative to its Whisper + LLaMA
  cascade baseline). Papers that quote one number, such as DeSTA2.5-Audio's 69.53, do not say in what could be read
  how it is formed; the usual reading is the unweighted mean of task accuracies over the classification tasks.
  `aggregate` gives that mean (`overall`, the headline) and, with a task-to-domain map, the per-domain means and
  their unweighted mean (`domain_macro`), so either reading can be reported. Which tasks go in (all classification
  tasks, or a subset) changes the number as much as the formula.

On your own outputs (one response string per dataset item)::

    from desta_audio.evaluation import dynamic_superb as ds

    prompts = [ds.judge_prompt(item["instruction"], item["label"], response) for item, response in zip(data, outputs)]
    # send each prompt to ds.JUDGE_MODEL with ds.JUDGE_SAMPLING, then:
    accuracy = ds.task_accuracy(ds.parse_verdict(reply) for reply in replies)
    # offline instead (a proxy):
    hits = [ds.proxy_correct(r, item["label"], item["instruction"]) for item, r in zip(data, outputs)]
    ds.aggregate({"EmotionRecognition_X": 70.0, "SpeakerCounting_Y": 40.0},
                 {"EmotionRecognition_X": "Paralinguistics", "SpeakerCounting_Y": "Speaker & Language"})
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from statistics import fmean
from types import MappingProxyType

from .judge_prompts import judge_prompt

# -- LLM judge (classification tasks) -----------------------------------------------------------------------------

# The referee the paper names (section 4.2): GPT-4o, greedy. The snapshot is not stated in what could be read.
JUDGE_MODEL = "gpt-4o"
JUDGE_SAMPLING = MappingProxyType({"temperature": 0})

# Our wording of the paper's referee protocol, NOT the official text (see the module docstring). No system prompt.
JUDGE_PROMPT_TEMPLATE = judge_prompt("dynamic_superb.v1")

# A whole line "Result: YES" / "Result: NO": any case, markdown or quotes around the parts ("**Result:** [NO]").
_VERDICT_LINE = re.compile(r"^[^\w\n]*result[^\w\n]*[:：][^\w\n]*(yes|no)[^\w\n]*$", re.IGNORECASE | re.MULTILINE)


def judge_prompt(instruction: str, label: str, response: str, template: str = JUDGE_PROMPT_TEMPLATE) -> str:
    """The judge's prompt for one item: `template` filled in one pass with the item's instruction, ground-truth label
    and the model's response (braces inside the fields are left as they are)."""
    return template.format(instruction=instruction, label=label, response=response)


def parse_verdict(text: str) -> bool | None:
    """The judge's verdict: True for "Result: YES", False for "Result: NO", None when the reply has no such line.

    The verdict must stand on a line of its own (markdown, brackets or quotes around "Result", the colon and the word
    are allowed); when there are several, the last one counts, as it follows the reasoning. "YES" or "NO" anywhere
    else, a line like "Result: YES/NO", or a reply cut off before the verdict gives None.
    """
    verdicts = _VERDICT_LINE.findall(text or "")
    if not verdicts:
        return None
    return verdicts[-1].lower() == "yes"


def task_accuracy(verdicts: Iterable[bool | None]) -> float:
    """A classification task's score: the percentage of items judged correct. An unparsed verdict (None) counts as
    incorrect; count them yourself if you report them."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("no verdicts to score")
    return 100.0 * sum(verdict is True for verdict in verdicts) / len(verdicts)


# -- offline proxy (classification tasks) -------------------------------------------------------------------------

_OPTIONS_PHRASE = re.compile(r"the answer could be\s*:?\s*(?:either\s+)?([^\n]*)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_OPTION_SEPARATOR = re.compile(r"\s*,\s*(?:or\s+)?|\s+or\s+", re.IGNORECASE)
_QUOTES = " \t\"'`“”‘’"


def _tokens(text: str) -> list[str]:
    """Lower-cased word tokens (`\\w+`: letters, digits, underscore); punctuation and spaces separate them."""
    return re.findall(r"\w+", str(text).lower())


def instruction_options(instruction: str) -> tuple[str, ...]:
    """The answers an instruction lists after "The answer could be" (the benchmark's convention for classification
    tasks), up to the end of that sentence, split at commas and "or", quotes stripped. Empty when the phrase is absent.
    Options that themselves contain a comma, " or " or a full stop are split or cut: a limit of this reading."""
    found = _OPTIONS_PHRASE.search(instruction or "")
    if not found:
        return ()
    sentence = _SENTENCE_END.split(found.group(1), maxsplit=1)[0]
    options = (part.strip(_QUOTES) for part in _OPTION_SEPARATOR.split(sentence.strip().rstrip(".")))
    return tuple(option for option in options if option)


def _contains_run(tokens: list[str], run: list[str]) -> bool:
    """Whether `run` occurs as consecutive tokens in `tokens`."""
    width = len(run)
    return any(tokens[start : start + width] == run for start in range(len(tokens) - width + 1))


def _matches_among_options(response_tokens: set[str], label_tokens: set[str], options: Iterable[str]) -> bool:
    """MMAU-style string match: every label token is in the response, and no token that only the other options have
    (their tokens minus the label's; options that tokenise like the label are ignored) is."""
    wrong_tokens: set[str] = set()
    for option in options:
        option_tokens = set(_tokens(option))
        if option_tokens != label_tokens:
            wrong_tokens |= option_tokens - label_tokens
    return label_tokens <= response_tokens and response_tokens.isdisjoint(wrong_tokens)


def proxy_correct(response: str, label: str, instruction: str | None = None) -> bool:
    """Offline PROXY for the LLM judge on a classification item; not the benchmark's metric.

    With the instruction's options (`instruction_options`): MMAU-style string match, so every word of the label is in
    the response and no word that only another option has is. Without options: the label's words appear as a
    consecutive run in the response ("a happy voice" holds "happy"; "unhappy" does not). Words are lower-cased `\\w+`
    tokens. An empty response, or a label with no word, is never correct.
    """
    label_tokens = _tokens(label)
    response_tokens = _tokens(response)
    if not label_tokens or not response_tokens:
        return False
    options = instruction_options(instruction) if instruction else ()
    if options:
        return _matches_among_options(set(response_tokens), set(label_tokens), options)
    return _contains_run(response_tokens, label_tokens)


# -- aggregation --------------------------------------------------------------------------------------------------


def _check_scores(task_scores: Mapping[str, float]) -> None:
    """Refuse an empty mapping and scores that are not finite numbers."""
    if not task_scores:
        raise ValueError("no task scores to aggregate")
    bad = sorted(task for task, score in task_scores.items() if not math.isfinite(score))
    if bad:
        raise ValueError(f"scores that are not finite numbers: {bad}")


def _domain_means(task_scores: Mapping[str, float], task_domains: Mapping[str, str]) -> dict[str, float]:
    """Unweighted mean of the scored tasks in each domain, domains in name order; every scored task needs a domain."""
    missing = sorted(set(task_scores) - set(task_domains))
    if missing:
        raise ValueError(f"tasks without a domain: {missing}")
    grouped: defaultdict[str, list[float]] = defaultdict(list)
    for task, score in task_scores.items():
        grouped[task_domains[task]].append(score)
    return {domain: fmean(grouped[domain]) for domain in sorted(grouped)}


def aggregate(task_scores: Mapping[str, float], task_domains: Mapping[str, str] | None = None) -> dict:
    """Per-domain and headline numbers from per-task scores (e.g. `task_accuracy` of each classification task).

    Returns `overall`, the headline: the unweighted mean over the given tasks (each task counts once, whatever its
    size), and `num_tasks`. With `task_domains` (task name to domain; tasks not in `task_scores` are ignored, so the
    full 180-task map can be passed) it adds `domains`, the unweighted mean of each domain's tasks, and
    `domain_macro`, the unweighted mean of those domain means. Scores keep their scale (percentages in, percentages
    out). Which of the two means a paper's single number is, the sources read do not say (module docstring).
    """
    _check_scores(task_scores)
    result: dict = {"overall": fmean(task_scores.values()), "num_tasks": len(task_scores)}
    if task_domains is not None:
        domains = _domain_means(task_scores, task_domains)
        result["domains"] = domains
        result["domain_macro"] = fmean(domains.values())
    return result
