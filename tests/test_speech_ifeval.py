"""Speech-IFEval scoring: every checker both ways (edge cases included), the Punkt-like sentence count, the CoT judge
prompt and verdict parser, and the aggregation on a small hand-made set against hand-computed numbers."""

import pytest

from desta_audio.evaluation.speech_ifeval import (
    CHECKERS,
    COT_JUDGE_SYSTEM_PROMPT,
    cot_judge_messages,
    cot_judge_prompt,
    count_sentences,
    count_words,
    follows,
    forgetting_rate,
    ifrate,
    parse_cot_verdict,
    score_record,
    score_records,
)

END_PHRASE = {"end_phrase": "Is there anything else I can help with?"}
REPEAT = {"prompt_to_repeat": "The answer is:"}

# (instruction id, kwargs, response, followed)
CASES = [
    # detectable_format:json_format
    ("detectable_format:json_format", {}, '{"emotion": "sad"}', True),
    ("detectable_format:json_format", {}, '```json\n{"emotion": "sad"}\n```', True),
    ("detectable_format:json_format", {}, '```JSON\n["a", "b"]\n```', True),
    ("detectable_format:json_format", {}, '```Json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '```\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '  {"a": 1}  \n\n', True),
    ("detectable_format:json_format", {}, "42", True),
    ("detectable_format:json_format", {}, 'Here is the JSON: {"a": 1}', False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```\nHope this helps!', False),
    ("detectable_format:json_format", {}, '```python\n{"a": 1}\n```', False),
    ("detectable_format:json_format", {}, '{"a": 1,}', False),
    # change_case:english_capital
    ("change_case:english_capital", {}, "HE SAT DOWN, WEAK AND BEWILDERED. ZORA! 2024", True),
    ("change_case:english_capital", {}, "THE ANSWER IS: MALE\n", True),
    ("change_case:english_capital", {}, "ÉCOLE ΑΘΗΝΑ", True),
    ("change_case:english_capital", {}, "HE SAT DOWN, weak", False),
    ("change_case:english_capital", {}, "123 !!! ---", False),
    # change_case:english_lowercase
    ("change_case:english_lowercase", {}, "he sat down, weak and bewildered. zora! 2024", True),
    ("change_case:english_lowercase", {}, "bonjour à tous", True),
    ("change_case:english_lowercase", {}, "he sat down with Zora", False),
    ("change_case:english_lowercase", {}, "42 - 7 = 35", False),
    # startend:quotation
    ("startend:quotation", {}, '"The speaker sounds happy."', True),
    ("startend:quotation", {}, '  "The speaker sounds happy."\n', True),
    ("startend:quotation", {}, '""', True),
    ("startend:quotation", {}, '"', False),
    ("startend:quotation", {}, "\u201cThe speaker sounds happy.\u201d", False),
    ("startend:quotation", {}, '"The speaker sounds happy." I think.', False),
    # detectable_format:title
    ("detectable_format:title", {}, "<<A Sad Farewell>>\nThe speaker says goodbye.", True),
    ("detectable_format:title", {}, "Answer: male <<Gender>> at the end", True),
    ("detectable_format:title", {}, "<< >>\nNo title here.", False),
    ("detectable_format:title", {}, "<<>> nothing", False),
    ("detectable_format:title", {}, "<<<>>>", False),
    ("detectable_format:title", {}, "<<A Sad\nFarewell>>", False),
    ("detectable_format:title", {}, "<A Sad Farewell>", False),
    # combination:repeat_prompt
    ("combination:repeat_prompt", REPEAT, "The answer is: happy", True),
    ("combination:repeat_prompt", REPEAT, "the ANSWER is: happy", True),
    ("combination:repeat_prompt", REPEAT, '  "The answer is: happy"', True),
    ("combination:repeat_prompt", REPEAT, "'The answer is:' happy", True),
    ("combination:repeat_prompt", REPEAT, "Sure! The answer is: happy", False),
    ("combination:repeat_prompt", REPEAT, '" The answer is: happy', False),
    # startend:end_checker
    ("startend:end_checker", END_PHRASE, "The speaker is male. Is there anything else I can help with?", True),
    ("startend:end_checker", END_PHRASE, "Male. is there anything else i can help with?  \n\n", True),
    ("startend:end_checker", END_PHRASE, '"Male. Is there anything else I can help with?"', True),
    ("startend:end_checker", END_PHRASE, "Male. Is there anything else I can help with? Thanks", False),
    ("startend:end_checker", END_PHRASE, "Male. Is there anything else I can help with?'", False),
    ("startend:end_checker", END_PHRASE, "Male. Is there anything else I can help with.", False),
    # detectable_format:number_bullet_lists
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* calm\n* slow\n* sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "- calm\n- slow\n- sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "\u2022 calm\n\u2022 slow\n\u2022 sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "1. calm\n2. slow\n3. sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "Themes:\n  * calm\n- slow\n1. sad\n", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "**Themes**\n* calm\n* slow\n* sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* calm\\n* slow\\n* sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "2024 was calm.\n* slow\n* sad", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* calm\n* slow", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* calm\n* slow\n* sad", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "In 2024:\n* calm\n* slow", True),
    # length_constraints:number_sentences ("less than" is <, "at least" is >=)
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two. Three.", False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "One. Two. Three.", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "One. Two.", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Mr. Smith left.", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Line one\nline two", False),
    # keywords:existence (case-insensitive, inside longer words too)
    ("keywords:existence", {"keywords": ["orchard", "walnut"]}, "An ORCHARD of Walnut trees.", True),
    ("keywords:existence", {"keywords": ["peace"]}, "A peaceful morning.", True),
    ("keywords:existence", {"keywords": ["orchard", "walnut"]}, "An orchard of apple trees.", False),
    # keywords:forbidden_words (whole words, case-insensitive)
    ("keywords:forbidden_words", {"forbidden_words": ["gold"]}, "A golden sunset.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["Henley", "London"]}, "A trip to Paris.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["gold"]}, "Gold, silver and bronze.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["Henley", "London"]}, "Rain over LONDON.", False),
    # length_constraints:number_words
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four five", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "don't stop now, ok", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four", False),
    # length_constraints:number_paragraphs (any line break or *** separates)
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n\nSecond part.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\nSecond part.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part. *** Second part.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nFirst part.\n***\nSecond part.\n\n", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Only one paragraph.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n \nSecond part.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 1}, "Title\nBody", False),
]

# A valid kwargs dict for every instruction id, for the checks that apply to all of them.
KWARGS = {
    "detectable_format:json_format": {},
    "change_case:english_capital": {},
    "change_case:english_lowercase": {},
    "startend:quotation": {},
    "detectable_format:title": {},
    "combination:repeat_prompt": REPEAT,
    "startend:end_checker": END_PHRASE,
    "detectable_format:number_bullet_lists": {"num_bullets": 0},
    "length_constraints:number_sentences": {"num_sentences": 1, "relation": "less than"},
    "keywords:existence": {"keywords": []},
    "keywords:forbidden_words": {"forbidden_words": ["gold"]},
    "length_constraints:number_words": {"num_words": 5, "relation": "less than"},
    "length_constraints:number_paragraphs": {"num_paragraphs": 0},
}


# ----------------------------------------------------------------------------- checkers


@pytest.mark.parametrize(("instruction_id", "kwargs", "response", "followed"), CASES)
def test_checker(instruction_id, kwargs, response, followed):
    assert CHECKERS[instruction_id](response, kwargs) is followed
    assert follows(response, [instruction_id], [kwargs]) == [followed]


def test_every_checker_has_cases_both_ways_and_a_docstring():
    assert set(CHECKERS) == set(KWARGS)
    for instruction_id, checker in CHECKERS.items():
        verdicts = {followed for i, _, _, followed in CASES if i == instruction_id}
        assert verdicts == {True, False}, instruction_id
        assert checker.__doc__, instruction_id


@pytest.mark.parametrize("instruction_id", sorted(KWARGS))
@pytest.mark.parametrize("response", ["", "   \n\t"])
def test_an_empty_response_follows_nothing(instruction_id, response):
    assert follows(response, [instruction_id], [KWARGS[instruction_id]]) == [False]


def test_the_raw_checkers_leave_the_empty_rule_to_follows():
    assert CHECKERS["keywords:forbidden_words"]("", {"forbidden_words": ["gold"]})
    assert follows("", ["keywords:forbidden_words"], [{"forbidden_words": ["gold"]}]) == [False]


def test_follows_gives_one_verdict_per_instruction():
    ids = ["change_case:english_lowercase", "startend:end_checker", "keywords:existence"]
    kwargs = [{}, END_PHRASE, {"keywords": ["rain"]}]
    assert follows("it is sunny. is there anything else i can help with?", ids, kwargs) == [True, True, False]


def test_unknown_instruction_ids_raise_naming_the_id():
    with pytest.raises(ValueError, match="language:response_language"):
        follows("Bonjour", ["change_case:english_capital", "language:response_language"], [{}, {"language": "fr"}])
    with pytest.raises(ValueError, match="punctuation:no_comma"):
        follows("", ["punctuation:no_comma"], [{}])


def test_bad_kwargs_raise():
    with pytest.raises(ValueError, match="2 instruction ids but 1"):
        follows("x", ["change_case:english_capital", "startend:quotation"], [{}])
    with pytest.raises(ValueError, match="end_phrase"):
        follows("x", ["startend:end_checker"], [{"end_phrase": None}])
    with pytest.raises(ValueError, match="relation"):
        follows("x", ["length_constraints:number_words"], [{"num_words": 3, "relation": "at most"}])


def test_unused_kwargs_keys_set_to_none_are_ignored():
    """As `datasets` loads the records: every kwargs dict with the union of keys, the others None."""
    kwargs = {"num_bullets": None, "end_phrase": None, "num_words": 3, "relation": "at least", "keywords": None}
    assert follows("one two three", ["length_constraints:number_words"], [kwargs]) == [True]
    assert follows("SAD", ["change_case:english_capital"], [None]) == [True]


@pytest.mark.parametrize(
    ("text", "words"),
    [("don't stop", 3), ("well-known fact", 3), ("Zora! Zora!", 2), ("", 0), ("café 42", 2)],
)
def test_count_words(text, words):
    assert count_words(text) == words


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("", 0),
        ("Hello world", 1),
        ("Hello world.  ", 1),
        ("Hello. World.", 2),
        ("Line one\nLine two\nLine three", 1),
        ("Really?! Yes.", 2),
        ("Very bad acting!!! I promise.", 2),
        ("Mr. Smith went home. He slept.", 2),
        ("The U.S. troops arrived.", 1),
        ("Fruit, e.g. apples. Yes.", 3),
        ("Apples, pears, etc. Bananas too.", 2),
        ('He said "hi." Then he left.', 2),
        ("(It was late.) Then we left.", 2),
        ("It ended.)", 1),
        ("Wait... This is it.", 2),
        ("Wait... what?", 1),
        ("1. apples and 2. pears", 1),
        ("It cost 3.5 dollars. Cheap.", 2),
        ("J. Smith wrote it.", 1),
        ("End. **Bold.**", 3),
    ],
)
def test_count_sentences_like_punkt(text, sentences):
    assert count_sentences(text) == sentences


# ----------------------------------------------------------------------------- chain-of-thought judge


def test_cot_judge_prompt_and_messages():
    instruction = "Which emotion does the speaker show?\nThink step by step."
    response = "The voice is low and slow, so: sad."
    prompt = cot_judge_prompt(instruction, response)
    assert prompt == f"User input: {instruction}\nModel's Response: {response}"
    assert cot_judge_messages(instruction, response) == [
        {"role": "system", "content": COT_JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    assert "demonstrates reasoning behavior" in COT_JUDGE_SYSTEM_PROMPT
    assert 'Answer in the format: "Result: <YES or NO>" at the end.' in COT_JUDGE_SYSTEM_PROMPT


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Result: YES", True),
        ("The response explains its steps.\nResult: NO", False),
        ("result: yes", True),
        ("RESULT: No", False),
        ("Result:\nYES", True),
        ("Result: YES\nOn second thought, Result: NO", True),
        ("Result:  YES", None),
        ("**Result:** YES", None),
        ("Result: <YES>", None),
        ("Result: maybe", None),
        ("YES", None),
        ("", None),
    ],
)
def test_parse_cot_verdict(reply, verdict):
    assert parse_cot_verdict(reply) is verdict


# ----------------------------------------------------------------------------- scoring and aggregation


def closed(instruction_id, kwargs=None, record_id=0):
    return {
        "id": record_id,
        "dataset": "Speech_emotion_recognition",
        "metric": "accuracy",
        "instruction": "What emotion does the speaker show?",
        "instruction_id_list": [instruction_id],
        "kwargs": [kwargs or {}],
        "label": "sad",
    }


def creative(ids_and_kwargs, record_id=1000):
    return {
        "id": record_id,
        "dataset": "Automatic_speech_recognition",
        "metric": "open",
        "instruction": "Write a short story inspired by the audio.",
        "instruction_id_list": [i for i, _ in ids_and_kwargs],
        "kwargs": [k for _, k in ids_and_kwargs],
    }


def cot(judge_reply):
    return {"dataset": "MMAU", "metric": "cot", "instruction": "Think step by step.", "eval_response": judge_reply}


WORDS_AT_LEAST_3 = {"num_words": 3, "relation": "at least"}
WORDS_AT_LEAST_5 = {"num_words": 5, "relation": "at least"}

# Closed-ended: 2 of 4 followed. Creative: prompts 2 of 3, instructions 4 of 5. CoT: 3 of 4 YES.
HAND_MADE = [
    (closed("change_case:english_capital"), "SAD"),  # followed
    (closed("change_case:english_lowercase"), "Sad"),  # not
    (closed("detectable_format:json_format"), '```json\n{"emotion": "sad"}\n```'),  # followed
    (closed("startend:end_checker", END_PHRASE), ""),  # not: empty
    (
        creative(
            [("keywords:existence", {"keywords": ["rain"]}), ("length_constraints:number_words", WORDS_AT_LEAST_3)]
        ),
        "rain falls softly",
    ),  # followed, followed
    (
        creative(
            [
                ("keywords:forbidden_words", {"forbidden_words": ["sun"]}),
                ("length_constraints:number_words", WORDS_AT_LEAST_5),
            ]
        ),
        "sun sun sun sun sun",
    ),  # not, followed
    (creative([("detectable_format:number_bullet_lists", {"num_bullets": 2})]), "* rain\n* wind"),  # followed
    (cot("Result: YES"), "Step 1: the voice is low. Step 2: so, sad."),
    (cot("Result: NO"), "Sad."),
    (cot("It breaks the problem down.\nresult: yes"), "First... then..."),
    (cot("Result: YES"), "Let me think."),
]


def test_score_record_fields():
    result = score_record(closed("startend:quotation", record_id=7), '"sad"')
    assert result == {
        "part": "closed_ended",
        "id": 7,
        "dataset": "Speech_emotion_recognition",
        "instruction_id_list": ["startend:quotation"],
        "follow_instruction_list": [True],
        "follow_all_instructions": True,
    }
    judged = score_record(cot("Result: NO"), "Sad.")
    assert (judged["part"], judged["id"], judged["instruction_id_list"]) == ("chain_of_thought", None, [])
    assert judged["follow_all_instructions"] is False


def test_score_records_on_a_hand_made_set():
    report = score_records(HAND_MADE)
    assert len(report["records"]) == len(HAND_MADE)
    parts = report["parts"]
    assert parts["closed_ended"] == {
        "count": 4,
        "follow_rate": 0.5,
        "prompt_level": 0.5,
        "instruction_level": 0.5,
        "by_instruction": {
            "change_case:english_capital": 1.0,
            "change_case:english_lowercase": 0.0,
            "detectable_format:json_format": 1.0,
            "startend:end_checker": 0.0,
        },
        "by_category": {"change_case": 0.5, "detectable_format": 1.0, "startend": 0.0},
        "by_group": {"change_case": 0.5, "json_format": 1.0, "startend": 0.0},
    }
    creative_part = parts["creative_writing"]
    assert creative_part["count"] == 3
    assert creative_part["follow_rate"] == creative_part["prompt_level"] == pytest.approx(2 / 3)
    assert creative_part["instruction_level"] == pytest.approx(4 / 5)
    assert creative_part["by_group"] == {"bullet_lists": 1.0, "keywords": 0.5, "length_constraints": 1.0}
    assert creative_part["by_category"] == {"detectable_format": 1.0, "keywords": 0.5, "length_constraints": 1.0}
    assert parts["chain_of_thought"] == {"count": 4, "follow_rate": 0.75}
    # (1/2 + 2/3 + 3/4) / 3 = (18 + 24 + 27) / 108
    assert report["ifrate"] == pytest.approx(69 / 108)


def test_ifrate_needs_all_three_parts():
    report = score_records(HAND_MADE[:7])
    assert set(report["parts"]) == {"closed_ended", "creative_writing"}
    assert report["ifrate"] is None


def test_ifrate_and_forgetting_rate_match_the_leaderboard():
    # Llama3-8B-Instruct: closed 93.35, creative 93.75, CoT 90.50 -> IFrate 92.53
    assert ifrate(93.35, 93.75, 90.50) == pytest.approx(92.5333, abs=1e-4)
    assert ifrate(0.5, 1.0, 0.0) == pytest.approx(0.5)
    # DeSTA2 against Llama3-8B-Instruct: (89.23 - 92.53) / 92.53 -> -3.57 %
    assert round(100 * forgetting_rate(89.23, 92.53), 2) == -3.57
    assert forgetting_rate(0.9, 0.9) == 0.0
    with pytest.raises(ValueError):
        forgetting_rate(0.5, 0.0)


def test_records_that_cannot_be_scored_raise():
    with pytest.raises(ValueError, match="no records"):
        score_records([])
    with pytest.raises(ValueError, match="eval_response"):
        score_record({"metric": "cot", "instruction": "Think step by step."}, "Step 1...")
    with pytest.raises(ValueError, match="no 'Result: YES/NO' verdict"):
        score_record(cot("I think it does."), "Step 1...")
    with pytest.raises(ValueError, match="woprompt"):
        score_record({"id": 3, "metric": "accuracy", "instruction": "What emotion?"}, "sad")
    with pytest.raises(ValueError, match="metric"):
        score_record({"metric": "bleu"}, "x")
