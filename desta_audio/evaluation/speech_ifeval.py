"""Speech-IFEval: does a speech-aware LLM still follow instructions? Offline scoring of one's own outputs.

Speech-IFEval (Lu, Kuan and Lee, Interspeech 2025; code github.com/kehanlu/Speech-IFEval, audio in the Hugging
Face dataset kehanlu/Speech-IFEval) asks a model about an audio clip and adds an output constraint to the question.
Its three parts, told apart by a record's `metric`:

- closed-ended (933 records, `metric` "accuracy" or "wer"): ASR, gender, emotion and MMAU questions, each with one
  format constraint (all capitals, all lower case, JSON, a <<title>>, wrapped in quotes, start with a given phrase,
  end with a given phrase);
- creative writing (400 records, `metric` "open"): writing about the clip under a length, keyword or bullet-list
  constraint;
- chain of thought (200 records, `metric` "cot", no `id`, no constraint list): "think step by step"; an LLM judge
  says whether the response shows reasoning.

A record holds `id`, `audio_filepath`, `textual_audio` (the clip as text, what the text-only reference LLM is
given), `instruction`, `dataset`, `metric`, `instruction_id_list`, `kwargs` (one dict per instruction id) and, for
closed-ended ones, `label`. The follow rate of a part is the share of its records whose constraints all hold;
IFrate is the mean of the three parts' follow rates, and the forgetting rate compares a speech model's IFrate with
that of the text-only LLM it was built on (`forgetting_rate`).

The checkers are the benchmark's variant of IFEval's, always in strict mode (the response as given; IFEval's loose
mode, which retries with the first/last line or the asterisks removed, is not used by the benchmark):

- an empty (or whitespace-only) response follows no instruction;
- the case checkers test letter case only (Python's `str.isupper`/`str.islower`): no language detection;
- the JSON checker strips a Markdown code fence (```` ```json ````, ```` ```Json ````, ```` ```JSON ```` or
  ```` ``` ````) before parsing;
- a bullet is a line starting with `*`, `-`, `•` or a digit; any line break separates paragraphs;
- sentences are counted as NLTK's Punkt English tokenizer counts them, which the benchmark uses, re-implemented
  with the standard library; Punkt's word statistics are left out, so after an abbreviation, initial or ellipsis
  a few capitalised words are judged differently (`count_sentences`).

To score your own outputs: run your model on the three JSONL files of the benchmark's repository
(`data/eval_data/closed_ended_questions.jsonl`, `creative_writing.jsonl`, `chain-of-thought.jsonl`), then::

    from desta_audio.evaluation.speech_ifeval import cot_judge_messages, score_records

    # chain of thought only: ask a judge LLM (the benchmark used gpt-4o-2024-11-20) and keep its reply
    for record, response in cot_pairs:
        record["eval_response"] = my_llm(cot_judge_messages(record["instruction"], response))

    report = score_records(closed_pairs + creative_pairs + cot_pairs)   # pairs of (record, response)
    report["ifrate"], report["parts"]["closed_ended"]["follow_rate"]

Rates are fractions in [0, 1]; the benchmark's tables print them times 100.
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from .judge_prompts import judge_prompt

# ----------------------------------------------------------------------------- parts and records

CLOSED_ENDED = "closed_ended"
CREATIVE_WRITING = "creative_writing"
CHAIN_OF_THOUGHT = "chain_of_thought"
PARTS = (CLOSED_ENDED, CREATIVE_WRITING, CHAIN_OF_THOUGHT)
PART_OF_METRIC = {"accuracy": CLOSED_ENDED, "wer": CLOSED_ENDED, "open": CREATIVE_WRITING, "cot": CHAIN_OF_THOUGHT}

# The benchmark's own grouping of instruction ids in its report ("Speech-IFEval accuracy"); other ids: "other".
INSTRUCTION_GROUPS = {
    "detectable_format:number_bullet_lists": "bullet_lists",
    "length_constraints:number_words": "length_constraints",
    "length_constraints:number_sentences": "length_constraints",
    "length_constraints:number_paragraphs": "length_constraints",
    "keywords:forbidden_words": "keywords",
    "keywords:existence": "keywords",
    "change_case:english_capital": "change_case",
    "change_case:english_lowercase": "change_case",
    "detectable_format:json_format": "json_format",
    "startend:quotation": "wrapping",
    "detectable_format:title": "wrapping",
    "combination:repeat_prompt": "startend",
    "startend:end_checker": "startend",
}

LESS_THAN = "less than"
AT_LEAST = "at least"


def part_of(record: Mapping) -> str:
    """The part a record belongs to, from its `metric`."""
    metric = record.get("metric")
    if metric not in PART_OF_METRIC:
        raise ValueError(f"Record has metric {metric!r}; Speech-IFEval's are {sorted(PART_OF_METRIC)}.")
    return PART_OF_METRIC[metric]


# ----------------------------------------------------------------------------- kwargs


def _required(kwargs: Mapping, key: str):
    """A checker's argument. Keys a checker does not read are ignored: loading the records with `datasets` gives
    every kwargs dict the union of all keys, the unused ones set to None."""
    value = kwargs.get(key)
    if value is None:
        raise ValueError(f"The instruction needs the argument {key!r}; kwargs has {dict(kwargs)!r}.")
    return value


def _compare(count: int, kwargs: Mapping, threshold_key: str) -> bool:
    """IFEval's two relations: "less than" is count < threshold, "at least" is count >= threshold."""
    threshold = _required(kwargs, threshold_key)
    relation = _required(kwargs, "relation")
    if relation == LESS_THAN:
        return count < threshold
    if relation == AT_LEAST:
        return count >= threshold
    raise ValueError(f"relation must be {LESS_THAN!r} or {AT_LEAST!r}, not {relation!r}.")


# ----------------------------------------------------------------------------- sentence counting (Punkt-like)

_SENTENCE_END_CHARS = frozenset(".?!")
# Punctuation that may follow a sentence end without a space, and that ends a word in Punkt's word tokenizer.
_NON_WORD = r"""[)";}\]*:@'({\[!?]"""
_MULTI_CHAR_PUNCT = r"(?:-{2,}|\.{2,}|(?:\.\s){2,}\.)"
_WORD_END = rf"(?=\s|$|{_NON_WORD}|{_MULTI_CHAR_PUNCT}|,(?=$|\s|{_NON_WORD}|{_MULTI_CHAR_PUNCT}))"
_WORD_TOKEN = re.compile(rf"{_MULTI_CHAR_PUNCT}|(?=[^(\"`{{\[:;&#*@)}}\]\-,])\S+?{_WORD_END}|\S")
_CANDIDATE_END = re.compile(rf"[.?!](?=(?P<after>{_NON_WORD}|\s+(?P<next>\S+)))")
_CLOSING_PUNCT = re.compile(r"""["')\]}]+?(?:\s+|(?=--)|$)""")
_ELLIPSIS = re.compile(r"\.\.+|(?:\.\s){2,}\.")
_INITIAL = re.compile(r"[^\W\d]\.")
_NUMBER = re.compile(r"-?[.,]?\d[\d,.-]*\.?")

# The trained parameters of Punkt's English model that the count uses: the abbreviations (a period after them ends
# no sentence: note that "e.g", "i.e" and "etc" are not among them) and the sentence starters.
_ABBREVIATIONS = frozenset(
    ". . |a.a|a.c|a.d|a.g|a.h|a.m|a.m.e|a.s|a.t|adm|ala|ariz|aug|ave|b.f|b.v|bros|c|c.i.t|c.o.m.b|c.v|calif|chg|cie|co|"
    "col|colo|conn|corp|cos|ct|d|d.c|d.h|d.w|dec|dr|e|e.f|e.h|e.l|e.m|f|f.g|f.j|feb|fla|fri|ft|g|g.d|g.f|g.k|ga|gen|h|"
    "h.c|h.f|h.m|i.m.s|ill|inc|j.b|j.c|j.j|j.k|j.p|j.r|jan|jr|k|kan|ky|l|l.a|l.f|l.p|lt|ltd|m|m.b.a|m.d.c|m.j|maj|"
    "messrs|mg|mich|minn|mr|mrs|ms|n|n.c|n.d|n.h|n.j|n.m|n.v|n.y|nev|nov|oct|ok|okla|ore|p|p.a.m|p.m|pa|ph.d|prof|r|"
    "r.a|r.h|r.i|r.j|r.k|r.t|rep|reps|s|s.a|s.a.y|s.c|s.g|s.p.a|s.s|sen|sep|sept|sr|st|sw|t|t.j|tenn|tues|u.k|u.n|u.s|"
    "u.s.a|u.s.s.r|v|va|vs|vt|w|w.c|w.r|w.va|w.w|wash|wed|wis|yr".split("|")
)
_SENTENCE_STARTERS = frozenset(
    "according although among both but despite even he however i if in indeed instead it many meanwhile moreover most "
    "nevertheless nonetheless nor sales separately similarly since so some the there these they this though thus under "
    "when while yet".split()
)


def _word_type(token: str) -> str:
    return token.lower().removesuffix(".")


def _starts_sentence(token: str) -> bool | None:
    """Whether `token` opens a sentence, Punkt's orthographic guess without its word statistics: False for a
    lower-case word or a comma-like mark, True for a capitalised sentence starter, None (unknown: a name, another
    capitalised word, a number) otherwise."""
    if token in ";:,.!?" or token[0].islower():
        return False
    if token[0].isupper() and _word_type(token) in _SENTENCE_STARTERS:
        return True
    return None


def _ends_sentence(token: str, following: str) -> bool:
    """Whether `token` ends a sentence, `following` being the next token (Punkt's two annotation passes)."""
    if token in _SENTENCE_END_CHARS:
        return True
    if _ELLIPSIS.fullmatch(token):
        return _starts_sentence(following) is True
    if not token.endswith("."):
        return False
    stem = token[:-1].lower()
    abbreviation = stem in _ABBREVIATIONS or stem.split("-")[-1] in _ABBREVIATIONS
    initial = _INITIAL.fullmatch(token) is not None
    if abbreviation and not initial:
        return _starts_sentence(following) is True
    if initial or _NUMBER.fullmatch(token.lower()):
        starts = _starts_sentence(following)
        if starts is False or (starts is None and initial and following[0].isupper()):
            return False
        return not abbreviation
    return True


def _context_has_break(context: str) -> bool:
    """A sentence break inside `context` (the word around a candidate end and what follows it)."""
    tokens = _WORD_TOKEN.findall(context)
    return any(_ends_sentence(token, following) for token, following in zip(tokens, tokens[1:]))


def _last_space(text: str, start: int, stop: int) -> int | None:
    """Index of the last ASCII whitespace character in text[start:stop], None if there is none."""
    for index in range(stop - 1, start - 1, -1):
        if text[index] in string.whitespace:
            return index
    return None


def _candidate_groups(text: str) -> list[tuple[int, re.Match]]:
    """Candidate sentence ends with the start of the word each closes: (word start, match).

    Candidates in one whitespace-free word (`acting!!!`) merge into the last one, whose word then reaches back to
    the first; a candidate with an empty word (right after a space: `?!`) stays on its own, as in Punkt.
    """
    groups: list[tuple[int, re.Match]] = []
    for match in _CANDIDATE_END.finditer(text):
        floor = groups[-1][1].start() if groups else 0
        space = _last_space(text, floor, match.start())
        start = space + 1 if space is not None else (groups[-1][0] if groups else 0)
        if groups and groups[-1][1].start() > start:
            groups[-1] = (groups[-1][0], match)
        else:
            groups.append((start, match))
    return groups


def _sentence_slices(text: str) -> list[tuple[int, int]]:
    slices = []
    start = 0
    for word_start, match in _candidate_groups(text):
        if _context_has_break(text[word_start : match.end()] + match.group("after")):
            slices.append((start, match.end()))
            start = match.start("next") if match.group("next") else match.end()
    slices.append((start, len(text.rstrip())))
    return slices


def count_sentences(text: str) -> int:
    """Sentences in `text` as the benchmark counts them: NLTK's Punkt tokenizer with its English model.

    A sentence may end at `.`, `?` or `!` followed by a space and more text, or by a mark such as `"`, `)` or `*`.
    `?`, `!` and a period after an ordinary word always end one (so do `e.g.` and `etc.`: the English model does not
    know them as abbreviations). After one of the model's abbreviations (`Mr.`, `U.S.`) or an ellipsis a sentence
    ends only before one of its capitalised sentence starters (`The`, `This`, `However`...); after a number (`1.`)
    unless a lower-case word follows; after an initial (`J.`) before a sentence starter or a non-word, not before
    another capitalised word (a name). Closing quotes and brackets after a break stay with the sentence they close;
    line breaks alone end none.

    Punkt also asks its word statistics (is this capitalised word a name?), which are not shipped here: an outline
    letter (`A. Brief history`) or an ellipsis before a capitalised word can count differently.
    """
    count = 0
    shift = 0
    slices = _sentence_slices(text)
    for (start, stop), following in zip(slices, [*slices[1:], None]):
        start += shift
        shift = 0
        closing = _CLOSING_PUNCT.match(text, following[0], following[1]) if following else None
        if closing:
            shift = closing.end() - following[0]
            count += 1
        elif text[start:stop]:
            count += 1
    return count


# ----------------------------------------------------------------------------- checkers


def check_json_format(response: str, kwargs: Mapping) -> bool:
    """The whole response, stripped of a Markdown code fence (```` ```json ````, ```` ```Json ````,
    ```` ```JSON ```` or ```` ``` ```` before, ```` ``` ```` after), parses as JSON (`json.loads`; a bare number or
    string counts)."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check_english_capital(response: str, kwargs: Mapping) -> bool:
    """Every cased letter is upper case and there is at least one (`str.isupper`): digits and punctuation are free,
    the language is not checked."""
    return response.isupper()


def check_english_lowercase(response: str, kwargs: Mapping) -> bool:
    """Every cased letter is lower case and there is at least one (`str.islower`): digits and punctuation are free,
    the language is not checked."""
    return response.islower()


def check_quotation(response: str, kwargs: Mapping) -> bool:
    """The response, stripped of surrounding whitespace, starts and ends with an ASCII `"` (two characters at
    least)."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


_TITLE = re.compile(r"<<[^\n]+>>")


def check_title(response: str, kwargs: Mapping) -> bool:
    """A title in double angular brackets, `<<...>>` on one line, with some non-space text inside."""
    return any(title.lstrip("<").rstrip(">").strip() for title in _TITLE.findall(response))


def check_repeat_prompt(response: str, kwargs: Mapping) -> bool:
    """The response starts with `prompt_to_repeat`, ignoring case, surrounding whitespace and quote marks (`"`,
    `'`) around the response."""
    prompt = str(_required(kwargs, "prompt_to_repeat"))
    return response.strip().lower().strip("\"'").startswith(prompt.strip().lower())


def check_end_phrase(response: str, kwargs: Mapping) -> bool:
    """The response ends with `end_phrase`, ignoring case, trailing whitespace and double quotes around the
    response."""
    phrase = str(_required(kwargs, "end_phrase"))
    return response.strip().strip('"').lower().endswith(phrase.strip().lower())


# A bullet: a line whose first non-space character is `*` (not `**`), `-`, `•` or a digit (a numbered list). Each
# kind is counted on its own, as the benchmark does (a lone `*` line swallows the next line in its count).
_BULLETS = tuple(re.compile(pattern, re.MULTILINE) for pattern in (r"^\s*\*[^*].*$", r"^\s*-.*$", r"^\s*•.*$"))
_NUMBERED = re.compile(r"^\s*\d.*$", re.MULTILINE)


def check_number_bullet_lists(response: str, kwargs: Mapping) -> bool:
    """Exactly `num_bullets` bullet lines: lines starting (after spaces) with `*` (but not `**`), `-`, `•` or a
    digit. A literal backslash-n in the response counts as a line break."""
    text = response.replace("\\n", "\n")
    bullets = sum(len(pattern.findall(text)) for pattern in (*_BULLETS, _NUMBERED))
    return bullets == _required(kwargs, "num_bullets")


def check_number_sentences(response: str, kwargs: Mapping) -> bool:
    """The sentence count (`count_sentences`) against `num_sentences` by `relation`: "less than" (<) or
    "at least" (>=)."""
    return _compare(count_sentences(response), kwargs, "num_sentences")


def check_keywords_existence(response: str, kwargs: Mapping) -> bool:
    """Every one of `keywords` occurs, ignoring case, anywhere (inside longer words too: "peace" in "peaceful").
    As in the benchmark a keyword is a regular expression."""
    return all(re.search(keyword, response, flags=re.IGNORECASE) for keyword in _required(kwargs, "keywords"))


def check_forbidden_words(response: str, kwargs: Mapping) -> bool:
    """None of `forbidden_words` occurs as a whole word, ignoring case ("gold" is found in "Gold," but not in
    "golden")."""
    words = _required(kwargs, "forbidden_words")
    return not any(re.search(rf"\b{word}\b", response, flags=re.IGNORECASE) for word in words)


def count_words(text: str) -> int:
    """Words as the benchmark counts them: runs of word characters (`\\w+`), so "don't" is two."""
    return len(re.findall(r"\w+", text))


def check_number_words(response: str, kwargs: Mapping) -> bool:
    """The word count (`count_words`) against `num_words` by `relation`: "less than" (<) or "at least" (>=)."""
    return _compare(count_words(response), kwargs, "num_words")


_PARAGRAPH_BREAK = re.compile(r"\s*\*\*\*\s*|\n+")


def check_number_paragraphs(response: str, kwargs: Mapping) -> bool:
    """Exactly `num_paragraphs` paragraphs, separated by a `***` divider or by line breaks (one is enough). An
    empty paragraph at either end is not counted; one in the middle (a line of spaces between two line breaks) fails
    the instruction."""
    paragraphs = _PARAGRAPH_BREAK.split(response.strip())
    blank = [i for i, paragraph in enumerate(paragraphs) if not paragraph.strip()]
    if any(0 < i < len(paragraphs) - 1 for i in blank):
        return False
    return len(paragraphs) - len(blank) == _required(kwargs, "num_paragraphs")


CHECKERS: dict[str, Callable[[str, Mapping], bool]] = {
    "detectable_format:json_format": check_json_format,
    "change_case:english_capital": check_english_capital,
    "change_case:english_lowercase": check_english_lowercase,
    "startend:quotation": check_quotation,
    "detectable_format:title": check_title,
    "combination:repeat_prompt": check_repeat_prompt,
    "startend:end_checker": check_end_phrase,
    "detectable_format:number_bullet_lists": check_number_bullet_lists,
    "length_constraints:number_sentences": check_number_sentences,
    "keywords:existence": check_keywords_existence,
    "keywords:forbidden_words": check_forbidden_words,
    "length_constraints:number_words": check_number_words,
    "length_constraints:number_paragraphs": check_number_paragraphs,
}


def follows(response: str, instruction_id_list: Sequence[str], kwargs_list: Sequence[Mapping | None]) -> list[bool]:
    """Strict verdicts, one per instruction: its checker on the response as given. An empty or whitespace-only
    response follows none. Unknown instruction ids raise ValueError (before anything is checked)."""
    if len(instruction_id_list) != len(kwargs_list):
        raise ValueError(f"{len(instruction_id_list)} instruction ids but {len(kwargs_list)} kwargs dicts.")
    unknown = [i for i in instruction_id_list if i not in CHECKERS]
    if unknown:
        raise ValueError(f"Unknown Speech-IFEval instruction id(s) {unknown}; known: {sorted(CHECKERS)}.")
    if not response.strip():
        return [False] * len(instruction_id_list)
    return [CHECKERS[i](response, kwargs or {}) for i, kwargs in zip(instruction_id_list, kwargs_list)]


# ----------------------------------------------------------------------------- chain-of-thought judge

COT_JUDGE_MODEL = "gpt-4o-2024-11-20"
# The benchmark's judge instructions, word for word (a different wording would be a different judge).
COT_JUDGE_SYSTEM_PROMPT = judge_prompt("speech_ifeval_cot_system.v1")


def cot_judge_prompt(instruction: str, response: str) -> str:
    """The judge's user turn for one chain-of-thought record; send it after `COT_JUDGE_SYSTEM_PROMPT` as the system
    turn (`cot_judge_messages` builds both)."""
    return f"User input: {instruction}\nModel's Response: {response}"


def cot_judge_messages(instruction: str, response: str) -> list[dict[str, str]]:
    """The chat the benchmark sends its judge (`COT_JUDGE_MODEL`): the system instructions, then the user turn."""
    return [
        {"role": "system", "content": COT_JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": cot_judge_prompt(instruction, response)},
    ]


_VERDICT = re.compile(r"result:\s(yes|no)", re.IGNORECASE)


def parse_cot_verdict(text: str) -> bool | None:
    """The judge's verdict: the first "Result:" (any case) followed by one whitespace character and YES or NO (any
    case); True for yes. None when there is no such verdict (e.g. "Result: <YES>", "**Result:** YES" or no
    "Result:" at all): the benchmark has no score for that record, ask the judge again."""
    match = _VERDICT.search(text)
    return None if match is None else match.group(1).lower() == "yes"


# ----------------------------------------------------------------------------- scoring and aggregation


def _cot_verdict(record: Mapping) -> bool:
    """A chain-of-thought record's verdict from the judge's reply, kept in `eval_response` as in the benchmark."""
    reply = record.get("eval_response")
    if reply is None:
        raise ValueError(
            "A chain-of-thought record is scored by an LLM judge: send cot_judge_messages(instruction, response) to "
            "the judge and keep its reply in the record's 'eval_response'."
        )
    verdict = parse_cot_verdict(reply)
    if verdict is None:
        raise ValueError(f"The judge's reply has no 'Result: YES/NO' verdict (ask it again): {reply!r}")
    return verdict


def score_record(record: Mapping, response: str) -> dict:
    """One record's verdicts: `part`, `id`, `dataset`, `instruction_id_list`, `follow_instruction_list` and
    `follow_all_instructions` (the prompt-level verdict).

    Closed-ended and creative records are checked by `follows`. A chain-of-thought record has no instruction list;
    its one verdict is the judge's, parsed from the record's `eval_response` (ValueError when missing or without a
    verdict).
    """
    part = part_of(record)
    if part == CHAIN_OF_THOUGHT:
        instruction_ids: list[str] = []
        verdicts = [_cot_verdict(record)]
    else:
        if "instruction_id_list" not in record:
            raise ValueError(
                f"Record {record.get('id')!r} has no instruction_id_list: the benchmark's '-woprompt' closed-ended "
                "set measures task accuracy, not instruction following."
            )
        instruction_ids = list(record["instruction_id_list"])
        verdicts = follows(response, instruction_ids, record["kwargs"])
    return {
        "part": part,
        "id": record.get("id"),
        "dataset": record.get("dataset"),
        "instruction_id_list": instruction_ids,
        "follow_instruction_list": verdicts,
        "follow_all_instructions": all(verdicts),
    }


def _rate(verdicts: Sequence[bool]) -> float:
    return sum(verdicts) / len(verdicts)


def _rates_by(results: Sequence[dict], key: Callable[[str], str]) -> dict[str, float]:
    """Instruction-level accuracy per `key(instruction id)`, keys sorted."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        for instruction_id, followed in zip(result["instruction_id_list"], result["follow_instruction_list"]):
            groups[key(instruction_id)].append(followed)
    return {name: _rate(groups[name]) for name in sorted(groups)}


def summarize_part(results: Sequence[dict]) -> dict:
    """One part's numbers from its `score_record` results, as the benchmark reports them.

    Every part: `count` and `follow_rate` (the share of records that follow all their instructions, the number that
    enters IFrate). Rule-checked parts add `prompt_level` (the same share), `instruction_level` (the share of
    instructions followed) and instruction-level accuracy `by_instruction` (id), `by_category` (the id's part before
    ":") and `by_group` (`INSTRUCTION_GROUPS`).
    """
    prompt_level = _rate([r["follow_all_instructions"] for r in results])
    summary = {"count": len(results), "follow_rate": prompt_level}
    if results[0]["part"] == CHAIN_OF_THOUGHT:
        return summary
    followed = [f for r in results for f in r["follow_instruction_list"]]
    return summary | {
        "prompt_level": prompt_level,
        "instruction_level": _rate(followed),
        "by_instruction": _rates_by(results, lambda i: i),
        "by_category": _rates_by(results, lambda i: i.split(":")[0]),
        "by_group": _rates_by(results, lambda i: INSTRUCTION_GROUPS.get(i, "other")),
    }


def ifrate(closed: float, creative: float, cot: float) -> float:
    """IFrate: the mean of the closed-ended, creative-writing and chain-of-thought follow rates."""
    return (closed + creative + cot) / 3


def forgetting_rate(model_ifrate: float, reference_ifrate: float) -> float:
    """The forgetting rate Δ: the relative change of IFrate from the text-only reference LLM (given the clips as
    `textual_audio`) to the speech model built on it, (model - reference) / reference; negative means forgotten.
    The benchmark prints it times 100 (DeSTA2 89.23 against Llama3-8B-Instruct 92.53: -3.57)."""
    if reference_ifrate <= 0:
        raise ValueError(f"The reference IFrate must be positive, not {reference_ifrate}.")
    return (model_ifrate - reference_ifrate) / reference_ifrate


def score_records(pairs: Iterable[tuple[Mapping, str]]) -> dict:
    """Score (record, response) pairs from any of the three parts.

    Returns `records` (the `score_record` results, in order), `parts` (`summarize_part` of each part present) and
    `ifrate` (None unless all three parts are present).
    """
    results = [score_record(record, response) for record, response in pairs]
    if not results:
        raise ValueError("There are no records to score.")
    by_part: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_part[result["part"]].append(result)
    parts = {part: summarize_part(by_part[part]) for part in PARTS if part in by_part}
    complete = len(parts) == len(PARTS)
    overall = ifrate(*(parts[part]["follow_rate"] for part in PARTS)) if complete else None
    return {"records": results, "parts": parts, "ifrate": overall}
