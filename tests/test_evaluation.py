"""Evaluation harness: MMAU's string-match decisions, the reference's prompt, re-scoring, resuming, other formats,
the knowledge-retention check (frozen = identical, LoRA = drift) and the espeak/sox smoke set end to end."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from desta_audio import testing as tiny_assets
from desta_audio.cli import main
from desta_audio.evaluation.benchmark import PREDICTIONS_FILE, evaluate_benchmark, run_benchmark
from desta_audio.evaluation.data import (
    MMAU_SYSTEM_PROMPT,
    BenchmarkColumns,
    EvalItem,
    build_conversation,
    build_items,
    load_records,
    mcq_question,
)
from desta_audio.evaluation.retention import (
    RETENTION_JSON,
    RETENTION_MARKDOWN,
    knowledge_retention,
    load_retention_prompts,
    rebuild_base_llm,
)
from desta_audio.evaluation.scoring import (
    RESULTS_JSON,
    RESULTS_MARKDOWN,
    mmau_string_match,
    open_answer_match,
    read_predictions,
    rescore,
    results_markdown,
    score_predictions,
    strip_answer_prefix,
    word_error_rate,
)
from desta_audio.evaluation.smoke_qa import (
    ANSWERS_FILE,
    AUDIO_FOLDER,
    DATA_FILE,
    make_clip,
    make_smoke_qa,
    smoke_questions,
)
from desta_audio.runtime import load_pipeline
from modeling_desta import DestaForConditionalGeneration

PEOPLE = ["Man", "Woman", "Child", "Robot"]
SPEAKERS = ["A child", "A woman", "An adult man", "A teenager"]


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "answer, output, choices, expected",
    [
        ("Man", "Man.", PEOPLE, True),  # right answer
        ("Man", "Woman", PEOPLE, False),  # wrong answer ("man" and "woman" are different tokens)
        ("A woman", "A woman, or maybe a child", SPEAKERS, False),  # answer plus a token only a wrong choice has
        ("A woman", "a woman", SPEAKERS, True),  # "a" is in wrong choices too, but shared with the answer
        ("A woman", 'The correct answer is: "A woman".', SPEAKERS, True),  # the answer prefix is stripped
        ("Incorrect", "The correct answer is: Incorrect", ["Correct", "Incorrect"], True),  # ... before matching
        ("Incorrect", "the correct answer is: Incorrect", ["Correct", "Incorrect"], False),  # only the exact prefix
        ("An adult man", "AN ADULT-MAN!!", SPEAKERS, True),  # case and punctuation
        ("Male", "Female", ["Male", "Female"], False),  # a choice that is a substring of another
        ("Female", "female voice", ["Male", "Female"], True),  # extra words in no choice are fine
        ("Two", "2", ["One", "Two"], False),  # no number-word normalisation
        ("Yes", "yes", ["Yes", "yes."], True),  # a choice tokenising like the answer is not a wrong choice
        ("Café", "café", ["Café", "Bar"], True),  # Unicode word characters
        ("Man", "The correct answer is: ", PEOPLE, False),  # nothing left after the prefix
        ("Man", "", PEOPLE, False),
    ],
)
def test_mmau_string_match_decisions(answer, output, choices, expected):
    assert mmau_string_match(answer, strip_answer_prefix(output), choices) is expected


def test_reference_results_rescore_like_the_official_script(tmp_path):
    rows = [
        {
            "id": "a",
            "answer": "Man",
            "choices": PEOPLE,
            "task": "sound",
            "difficulty": "easy",
            "model_prediction": "Man.",
        },
        {
            "id": "b",
            "answer": "A woman",
            "choices": SPEAKERS,
            "task": "speech",
            "difficulty": "hard",
            "model_prediction": '"A child".',
        },
        {
            "id": "c",
            "answer": "Robot",
            "choices": PEOPLE,
            "task": "speech",
            "difficulty": "easy",
            "model_prediction": "Robot",
        },
        {
            "id": "d",
            "answer": "Robot",
            "choices": PEOPLE,
            "task": "music",
            "difficulty": "easy",
        },  # no prediction: skipped
    ]
    path = tmp_path / "mmau-test-mini_results.json"
    path.write_text(json.dumps(rows))
    results = rescore(path)
    assert results["overall"] == {"n": 3, "correct": 2, "accuracy": 66.67}
    assert results["groups"]["task"] == {
        "sound": {"n": 1, "correct": 1, "accuracy": 100.0},
        "speech": {"n": 2, "correct": 1, "accuracy": 50.0},
    }
    assert (tmp_path / "results.json").exists() and "| overall | all | 3 | 66.67 |" in (
        tmp_path / "results.md"
    ).read_text()


def test_answer_not_among_its_choices_is_never_scored_but_counted(caplog):
    """Such an item can never be scored right (or is scored against a typo): it is left out of every score, named in
    a warning once, and counted in results.json and results.md."""
    base = {"format": "mcq", "choices": PEOPLE, "categories": {"t": "a"}}
    records = [
        {**base, "id": "q1", "answer": "man.", "prediction": "Man"},
        {**base, "id": "q2", "answer": "Dog", "prediction": "Dog"},
    ]
    with caplog.at_level(logging.WARNING, logger="desta_audio.evaluation"):
        results = score_predictions(records)
    assert results["answer_not_in_choices"] == ["q2"]
    assert results["overall"] == {"n": 1, "correct": 1, "accuracy": 100.0}
    assert results["groups"]["t"] == {"a": {"n": 1, "correct": 1, "accuracy": 100.0}}
    assert "1 item(s) not scored: their answer is none of their choices: 'q2'" in results_markdown(results)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'q2'" in warnings[0] and "'q1'" not in warnings[0], warnings
    assert "not scored" in warnings[0]
    assert "answer_not_in_choices" not in score_predictions(records[:1])


def test_open_answer_and_wer_scoring():
    assert open_answer_match("Paris", "paris!") == (True, True)
    assert open_answer_match("The Eiffel Tower", "It is the eiffel tower.") == (False, True)
    assert open_answer_match(["NYC", "New York"], "new york") == (True, True)
    assert open_answer_match("cat", "a category") == (False, False)  # whole words only
    assert word_error_rate(["the cat sat on"], ["the cat sit on"]) == 0.25
    assert word_error_rate(["Hello, world!"], ["hello world"]) == 0.0
    records = [
        {
            "id": "1",
            "format": "asr",
            "answer": "one two three four",
            "prediction": "one two three four",
            "categories": {"task": "a"},
        },
        {
            "id": "2",
            "format": "asr",
            "answer": "one two three four",
            "prediction": "one two",
            "categories": {"task": "b"},
        },
    ]
    results = score_predictions(records)
    assert results["overall"] == {"n": 2, "wer": 25.0}
    assert results["groups"]["task"] == {"a": {"n": 1, "wer": 0.0}, "b": {"n": 1, "wer": 50.0}}


# ----------------------------------------------------------------------------- prompt


def test_mcq_prompt_is_the_reference_format(tiny_parts):
    _, processor = tiny_parts
    assert mcq_question("Q?", ["a", "b", "c", "d"]) == 'Q? Choose from the following options: "a", "b", "c" or "d"'
    assert mcq_question("Q?", ["a", "b"]) == 'Q? Choose from the following options: "a" or "b"'
    assert mcq_question("Q?", ["a"]) == 'Q? Choose from the following options: "a"'
    item = EvalItem(id="x", audio="clip.wav", question="Who speaks?", answer="Man", choices=PEOPLE)
    text, audio = processor.render_conversation(build_conversation(item, "mcq"), add_generation_prompt=True)
    expected_user = (
        processor.audio_token
        + "\n\n"
        + 'Who speaks? Choose from the following options: "Man", "Woman", "Child" or "Robot"'
    )
    assert MMAU_SYSTEM_PROMPT + "<|eot_id|>" in text and expected_user + "<|eot_id|>" in text
    assert audio == [{"type": "audio", "path": "clip.wav"}]  # no transcript given: Whisper transcribes


# ----------------------------------------------------------------------------- benchmark data


EVAL_DATA_CASES = [
    (
        "bad middle line",
        ".jsonl",
        '{"id": "a", "audio_id": "t.wav", "answer": "x"}\n{oops\n{"id": "c"}\n',
        ":2 is not valid JSON",
    ),
    ("bad last line", ".jsonl", '{"id": "a", "audio_id": "t.wav", "answer": "x"}\n{"id": ', ":2 is not valid JSON"),
    ("not an object", ".jsonl", "[1, 2]\n", ":1 holds a JSON list"),
    ("bad JSON list", ".json", '[\n{"id": "a",\n}\n]', ":3 is not valid JSON"),
    (
        "choices a string",
        ".json",
        '[{"id": "q1", "audio_id": "t.wav", "answer": "apple", "choices": "apple"}]',
        "'choices' must be a list of options; got 'apple'",
    ),
    ("no answer", ".json", '[{"id": "q1", "audio_id": "t.wav"}]', "Record 0 (id 'q1') has no 'answer' column"),
]


@pytest.mark.parametrize("case, suffix, text, message", EVAL_DATA_CASES, ids=[c[0] for c in EVAL_DATA_CASES])
def test_eval_data_errors_name_file_and_line(tmp_path, case, suffix, text, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        build_items(load_records(path))
    assert message in str(caught.value)
    if ":" in message[:3]:
        assert str(path) in str(caught.value)


ROW = {"id": "a", "audio_id": "t.wav", "question": "Q?", "choices": ["x", "y"], "answer": "x"}


@pytest.mark.parametrize(
    "suffix, data, named",
    [
        (".jsonl", (json.dumps(ROW) + "\n").encode("utf-16"), ("is UTF-16 text, not UTF-8", "iconv -f UTF-16")),
        (".json", json.dumps([ROW]).encode("utf-16-le"), ("is UTF-16 text, not UTF-8", "iconv -f UTF-16")),
        (".json", json.dumps([ROW]).encode("utf-8") + b"\n\xe9\n", ("is not UTF-8 text: byte 0xe9 at line 2",)),
        (".jsonl", b'{"id": "a"}\n{"id": "b\x01"}\n', (":2 is not valid JSON (Invalid control character at column",)),
    ],
    ids=["utf-16 jsonl", "utf-16 json without BOM", "latin-1 json", "control character"],
)
def test_eval_names_a_data_file_it_cannot_read(tmp_path, capsys, suffix, data, named):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(data)
    argv = ["eval", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--data-file", str(path)]  # no model load
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"desta-audio: error: {path}") and all(text in error for text in named), error


# ----------------------------------------------------------------------------- smoke set and runs


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required for the smoke set")
    path = tmp_path_factory.mktemp("smoke_qa")
    make_smoke_qa(path)
    return path


@pytest.fixture()
def smoke_items(smoke_dir):
    return build_items(json.loads((smoke_dir / DATA_FILE).read_text()), audio_root=smoke_dir)


def test_generator_reproduces_committed_answers(smoke_dir, tmp_path):
    records = json.loads((smoke_dir / DATA_FILE).read_text())
    assert records == json.loads(ANSWERS_FILE.read_text())
    assert len(records) == 16 and {r["task"] for r in records} == {"speech", "sound", "music"}
    assert all(r["answer"] in r["choices"] for r in records)
    assert all((smoke_dir / r["audio_id"]).stat().st_size > 1000 for r in records)
    by_id = {q.id: q for q in smoke_questions()}
    for clip in ("content-noise", "voice-female", "beeps-3"):  # deterministic audio, noise included
        make_clip(by_id[clip].sound, tmp_path / f"{clip}.wav")
        assert (tmp_path / f"{clip}.wav").read_bytes() == (smoke_dir / AUDIO_FOLDER / f"{clip}.wav").read_bytes()


@pytest.mark.slow
def test_smoke_set_end_to_end_and_rescore(saved_model_dir, smoke_dir, tmp_path, capsys):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "desta_audio.cli",
        "eval",
        "--model",
        str(saved_model_dir),
        "--data-file",
        str(smoke_dir / DATA_FILE),
    ]
    command += ["--output-dir", str(out), "--no-asr", "--max-new-tokens", "4", "--batch-size", "8"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1]
    )
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in (out / PREDICTIONS_FILE).read_text().splitlines()]
    assert sorted(p["id"] for p in predictions) == sorted(q.id for q in smoke_questions())
    assert all(p["transcripts"] == [""] for p in predictions)
    results = json.loads((out / RESULTS_JSON).read_text())
    assert results["overall"]["n"] == 16 and 0.0 <= results["overall"]["accuracy"] <= 100.0
    assert {k: v["n"] for k, v in results["groups"]["task"].items()} == {"music": 2, "sound": 6, "speech": 8}
    assert set(results["groups"]) == {"task", "sub-category", "difficulty"}
    assert result.stdout == (out / RESULTS_MARKDOWN).read_text()

    assert main(["eval", "--rescore", str(out / PREDICTIONS_FILE), "--output-dir", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / RESULTS_JSON).read_text()) == results
    assert capsys.readouterr().out == result.stdout


class GenerateCounter:
    """Counts the rows `generate` is asked for; raises on call `fail_on` (a run killed mid-way)."""

    def __init__(self, model, fail_on=None):
        self.model, self.original, self.fail_on = model, model.generate, fail_on
        self.calls, self.rows = 0, 0

    def __call__(self, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.rows += kwargs["input_ids"].shape[0]
        return self.original(**kwargs)


def test_interrupted_run_resumes_without_reasking(tiny_parts, smoke_items, tmp_path, monkeypatch):
    model, processor = tiny_parts
    pipe = load_pipeline(model, processor)
    run = dict(output_dir=tmp_path, batch_size=4, max_new_tokens=4, no_asr=True)

    killed = GenerateCounter(model, fail_on=3)
    monkeypatch.setattr(model, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(pipe, smoke_items, **run)
    first = read_predictions(tmp_path / PREDICTIONS_FILE)
    assert [r["id"] for r in first] == [item.id for item in smoke_items[:8]]  # two batches saved before the kill
    with open(tmp_path / PREDICTIONS_FILE, "a") as handle:
        handle.write('{"id": "beeps-1", "format": "mc')  # and a torn line, as a kill mid-write leaves

    resumed = GenerateCounter(model)
    monkeypatch.setattr(model, "generate", resumed)
    results = run_benchmark(pipe, smoke_items, **run)
    assert (resumed.calls, resumed.rows) == (2, 8)  # only the 8 unanswered items were asked
    records = read_predictions(tmp_path / PREDICTIONS_FILE)
    assert records[:8] == first and [r["id"] for r in records] == [item.id for item in smoke_items]
    assert len((tmp_path / PREDICTIONS_FILE).read_text().splitlines()) == 16  # the torn line was cut
    assert results["overall"]["n"] == 16
    assert rescore(tmp_path / PREDICTIONS_FILE, tmp_path / "rescored") == results

    finished = GenerateCounter(model)
    monkeypatch.setattr(model, "generate", finished)
    assert run_benchmark(pipe, smoke_items, **run) == results and finished.calls == 0
    with pytest.raises(ValueError, match="other settings.*max_new_tokens"):
        run_benchmark(pipe, smoke_items, **{**run, "max_new_tokens": 8})  # would mix answers of two settings


def test_eval_does_not_reuse_predictions_after_the_answer_key_changes(tiny_pipe, audio_dir, tmp_path):
    def items(answer):
        record = {"id": "q1", "audio_id": str(audio_dir / "tone.wav"), "question": "What?", "answer": answer}
        return build_items([{**record, "choices": ["tone", "speech"]}])

    out = tmp_path / "eval"
    run_benchmark(tiny_pipe, items("speech"), out, fmt="mcq", batch_size=1, max_new_tokens=2, no_asr=True)
    run_benchmark(tiny_pipe, items("tone"), out, fmt="mcq", batch_size=1, max_new_tokens=2, no_asr=True)
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in saved] == ["tone"]
    stale = [json.loads(line) for line in (out / "predictions.stale.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in stale] == ["speech"]


def test_dataset_with_mapped_columns_and_audio_feature(tiny_parts, smoke_dir, tmp_path):
    import datasets

    model, processor = tiny_parts
    audio = [str(smoke_dir / AUDIO_FOLDER / f"{name}.wav") for name in ("word-apple", "tone-220hz", "content-noise")]
    table = datasets.Dataset.from_dict(
        {
            "qid": ["q1", "q2", "q3"],
            "wav": audio,
            "prompt": ["Which word?", "Low or high?", "Speech or noise?"],
            "options": [["apple", "river"], ["Low", "High"], ["Speech", "Noise"]],
            "label": ["apple", "Low", "Noise"],
            "said": ["apple", "", ""],
            "domain": ["speech", "music", "sound"],
        }
    ).cast_column("wav", datasets.Audio(sampling_rate=16000))
    table.save_to_disk(tmp_path / "table")
    columns = BenchmarkColumns(
        id="qid",
        question="prompt",
        choices="options",
        answer="label",
        audio="wav",
        transcript="said",
        categories=["domain"],
    )
    results = evaluate_benchmark(
        model,
        tmp_path / "out",
        processor=processor,
        dataset=str(tmp_path / "table"),
        columns=columns,
        max_new_tokens=3,
        limit=2,
    )
    records = read_predictions(tmp_path / "out" / PREDICTIONS_FILE)
    assert [(r["id"], r["transcripts"], r["categories"], r["audio"]) for r in records] == [
        ("q1", ["apple"], {"domain": "speech"}, None),
        ("q2", [""], {"domain": "music"}, None),
    ]
    assert results["format"] == "mcq" and set(results["groups"]["domain"]) == {"speech", "music"}


def test_asr_and_open_formats_run(tiny_parts, smoke_items, tmp_path):
    model, processor = tiny_parts
    pipe = load_pipeline(model, processor)
    words = [EvalItem(i.id, i.audio, "", i.answer, categories=i.categories, transcript="") for i in smoke_items[:2]]
    asr = run_benchmark(pipe, words, tmp_path / "asr", fmt="asr", max_new_tokens=3)
    assert asr["format"] == "asr" and asr["overall"]["n"] == 2 and asr["overall"]["wer"] >= 0.0
    questions = [
        EvalItem(i.id, i.audio, "What is said?", [i.answer, "unknown"], transcript="") for i in smoke_items[:2]
    ]
    open_results = run_benchmark(pipe, questions, tmp_path / "open", fmt="open", max_new_tokens=3)
    assert set(open_results["overall"]) == {"n", "exact_match", "contains"}


def test_missing_inputs_fail_before_generating(tiny_parts, tmp_path, capsys):
    model, processor = tiny_parts
    items = [EvalItem("1", str(tmp_path / "nope.wav"), "Q?", "a", choices=["a", "b"])]
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        run_benchmark(load_pipeline(model, processor), items, tmp_path)
    assert main(["eval", "--data-file", str(tmp_path / "x.json")]) == 2
    assert "--model is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------- knowledge retention


def test_builtin_retention_prompts():
    prompts = load_retention_prompts()
    assert 18 <= len(prompts) <= 25 and len({p.prompt for p in prompts}) == len(prompts)


@pytest.mark.parametrize(
    "text, named",
    [
        ('{"prompt": "Hi"}\n{"prompt": "a\x01"}\n', ":2 is not valid JSON (Invalid control character at column"),
        ('{"prompt": "Hi"}\n\n{"question": "Hi"}\n', ":3 has no 'prompt' field (it has ['question'])"),
    ],
    ids=["broken line", "no prompt"],
)
def test_retention_prompt_file_errors_name_file_and_line(tmp_path, text, named):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_retention_prompts(path)
    assert str(caught.value).startswith(str(path)) and named in str(caught.value), caught.value


def _assert_identical(report):
    summary = report["summary"]
    assert summary["num_tokens"] > 0
    assert (summary["exact_match_rate"], summary["mean_logprob_diff"], summary["mean_abs_logprob_diff"]) == (
        1.0,
        0.0,
        0.0,
    )


def test_retention_is_identity_for_a_frozen_llm(tiny_parts, llm_dir, tmp_path):
    model, processor = tiny_parts
    rebuilt = rebuild_base_llm(model)
    assert type(rebuilt).__name__ == "LlamaForCausalLM"
    assert rebuilt.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()  # the same tensors, not a copy
    for base in (None, rebuilt, llm_dir):
        _assert_identical(knowledge_retention(model, processor.tokenizer, base_llm=base, max_new_tokens=6))
    references = tmp_path / "prompts.jsonl"
    references.write_text(
        json.dumps({"prompt": "Name a colour.", "reference": "Blue."}) + "\n" + json.dumps({"prompt": "Hi"}) + "\n"
    )
    report = knowledge_retention(
        model, processor.tokenizer, base_llm=llm_dir, prompts=load_retention_prompts(references), max_new_tokens=4
    )
    _assert_identical(report)
    assert [item["continuation"] for item in report["items"]] == ["reference", "base_greedy"]
    assert report["items"][0]["num_tokens"] == len(processor.tokenizer("Blue.", add_special_tokens=False).input_ids)


def test_retention_shows_lora_drift(saved_model_dir, llm_dir, tiny_parts):
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_parts[1].tokenizer
    torch.manual_seed(0)
    model = get_peft_model(
        DestaForConditionalGeneration.from_pretrained(saved_model_dir).eval(),
        LoraConfig(target_modules=r"model\.language_model\..*\.(q_proj|v_proj)", r=4, lora_alpha=8),
    )
    _assert_identical(knowledge_retention(model, tokenizer, max_new_tokens=6))  # lora_B starts at zero
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    rebuilt = knowledge_retention(model, tokenizer, max_new_tokens=6)
    from_folder = knowledge_retention(model, tokenizer, base_llm=llm_dir, max_new_tokens=6)
    assert rebuilt["summary"] == from_folder["summary"]  # the rebuilt base leaves the adapters out
    assert rebuilt["summary"]["mean_abs_logprob_diff"] > 0.01
    assert rebuilt["summary"]["exact_match_rate"] < 1.0


def test_retention_from_the_command_line(saved_model_dir, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--retention",
                "--model",
                str(saved_model_dir),
                "--max-new-tokens",
                "4",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / RETENTION_JSON).read_text())
    assert report["summary"]["exact_match_rate"] == 1.0 and report["summary"]["mean_logprob_diff"] == 0.0
    assert len(report["items"]) == len(load_retention_prompts())
    assert capsys.readouterr().out == (tmp_path / RETENTION_MARKDOWN).read_text()
