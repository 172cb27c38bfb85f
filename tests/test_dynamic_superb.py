"""Dynamic-SUPERB Phase-2 scoring: judge prompt and verdict parsing, the offline proxy, aggregation.
Pure Python, no model and no network."""

import math

import pytest

from desta_audio.evaluation import dynamic_superb as ds

INSTRUCTION = "Identify the emotion of the speaker. The answer could be happy, sad, or angry."


# -- judge prompt -------------------------------------------------------------------------------------------------


def test_judge_prompt_is_the_template_filled_with_the_item():
    prompt = ds.judge_prompt(INSTRUCTION, "sad", "The speaker sounds sad.")
    expected = (
        "You are grading a speech and audio model on a classification task.\n"
        "\n"
        "Instruction given to the model:\n"
        "Identify the emotion of the speaker. The answer could be happy, sad, or angry.\n"
        "\n"
        "Ground-truth answer:\n"
        "sad\n"
        "\n"
        "Model's response:\n"
        "The speaker sounds sad.\n"
        "\n"
        "Decide whether the model's response gives the ground-truth answer. Wording, letter case and added explanation "
        "do not matter; a response that gives a different answer, more than one answer, or no answer is incorrect.\n"
        'Explain your reasoning briefly first. Then end your reply with a line that is exactly "Result: YES" if the '
        'response is correct, or "Result: NO" if it is not.'
    )
    assert prompt == expected
    assert prompt == ds.JUDGE_PROMPT_TEMPLATE.format(
        instruction=INSTRUCTION, label="sad", response="The speaker sounds sad."
    )


def test_judge_prompt_keeps_braces_in_fields_and_takes_another_template():
    assert ds.judge_prompt("Say {label}", "{x}", "{response}", template="Q={instruction} A={label} R={response}") == (
        "Q=Say {label} A={x} R={response}"
    )


def test_judge_settings_are_the_papers():
    assert ds.JUDGE_MODEL == "gpt-4o"
    assert dict(ds.JUDGE_SAMPLING) == {"temperature": 0}


# -- verdict parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("The response names the correct emotion.\nResult: YES", True),
        ("The model answered angry, the label is sad.\nResult: NO", False),
        ("result: yes", True),
        ("Reasoning...\n**Result:** NO", False),
        ("Reasoning...\nResult: [YES]", True),
        ('Reasoning...\nResult: "no".', False),
        ("Result：YES", True),  # full-width colon
        ("Result: NO\nOn second thought the answers agree.\nResult: YES", True),  # the last verdict counts
        ("  Result : yes  \n", True),
    ],
)
def test_parse_verdict_reads_well_formed_replies(reply, verdict):
    assert ds.parse_verdict(reply) is verdict


@pytest.mark.parametrize(
    "reply",
    [
        "",
        None,
        "YES",  # no "Result:" line
        "The answer is correct, yes.",
        "Result: YES/NO",
        "Result: maybe",
        "Result: YES, because the emotion matches",  # the verdict must end its line
        "The model's result: the response says no emotion",
        "Reasoning that was cut off before the verd",
    ],
)
def test_parse_verdict_gives_none_on_malformed_replies(reply):
    assert ds.parse_verdict(reply) is None


def test_task_accuracy_counts_unparsed_verdicts_as_wrong():
    assert ds.task_accuracy([True, False, None, True]) == 50.0
    assert ds.task_accuracy(iter([True])) == 100.0
    with pytest.raises(ValueError):
        ds.task_accuracy([])


# -- offline proxy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "options"),
    [
        (INSTRUCTION, ("happy", "sad", "angry")),
        ("Is there speech? The answer could be 'yes' or 'no'.", ("yes", "no")),
        ("The answer could be: dog, cat or bird. Reply with one word.", ("dog", "cat", "bird")),
        ("The answer could be either male or female", ("male", "female")),
        ("Count the speakers. The answer could be 1, 2, 3, or 4.", ("1", "2", "3", "4")),
        ("Transcribe the audio.", ()),
        ("", ()),
    ],
)
def test_instruction_options(instruction, options):
    assert ds.instruction_options(instruction) == options


@pytest.mark.parametrize(
    ("response", "label", "correct"),
    [
        ("sad", "sad", True),
        ("The speaker sounds SAD.", "sad", True),
        ("Sad, clearly.", "sad", True),
        ("The speaker sounds happy.", "sad", False),
        ("Either sad or angry.", "sad", False),  # another option's word
        ("", "sad", False),
        ("sad", "", False),
    ],
)
def test_proxy_with_options_from_the_instruction(response, label, correct):
    assert ds.proxy_correct(response, label, INSTRUCTION) is correct


def test_proxy_with_multiword_options():
    instruction = "The answer could be acoustic guitar, electric guitar, or piano."
    assert ds.proxy_correct("It is an acoustic guitar.", "acoustic guitar", instruction)
    assert not ds.proxy_correct("It is an electric guitar.", "acoustic guitar", instruction)
    assert not ds.proxy_correct("A guitar.", "acoustic guitar", instruction)


def test_proxy_without_options_needs_the_label_as_a_word_run():
    assert ds.proxy_correct("I hear a dog barking.", "dog barking")
    assert ds.proxy_correct("DOG-BARKING", "dog barking")
    assert not ds.proxy_correct("A barking dog.", "dog barking")
    assert not ds.proxy_correct("The speaker is unhappy.", "happy")
    assert not ds.proxy_correct("Nothing to hear.", "dog", instruction="Transcribe the audio.")


# -- aggregation --------------------------------------------------------------------------------------------------

SCORES = {"EmotionA": 80.0, "EmotionB": 60.0, "Speaker": 50.0, "Music": 35.0}
DOMAINS = {"EmotionA": "Paralinguistics", "EmotionB": "Paralinguistics", "Speaker": "Speaker", "Music": "Music"}


def test_aggregate_headline_is_the_mean_over_tasks():
    assert ds.aggregate(SCORES) == {"overall": 56.25, "num_tasks": 4}  # (80 + 60 + 50 + 35) / 4


def test_aggregate_with_domains():
    result = ds.aggregate(SCORES, {**DOMAINS, "UnscoredTask": "Audio"})  # tasks without a score are ignored
    assert result["overall"] == 56.25
    assert result["num_tasks"] == 4
    assert result["domains"] == {"Music": 35.0, "Paralinguistics": 70.0, "Speaker": 50.0}
    assert list(result["domains"]) == ["Music", "Paralinguistics", "Speaker"]
    assert result["domain_macro"] == pytest.approx(155.0 / 3)  # (35 + 70 + 50) / 3


@pytest.mark.parametrize(
    ("scores", "domains"),
    [
        ({}, None),
        ({"A": math.nan}, None),
        ({"A": math.inf}, None),
        ({"A": 1.0, "B": 2.0}, {"A": "Audio"}),  # B has no domain
    ],
)
def test_aggregate_refuses_bad_input(scores, domains):
    with pytest.raises(ValueError):
        ds.aggregate(scores, domains)
