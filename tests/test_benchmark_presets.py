"""Benchmark presets (`eval --benchmark`): each benchmark's published layout becomes the right items and prompts,
and its predictions are scored by its own rule, checked against hand-computed numbers; the LLM judge is asked
through a real OpenAI-compatible server, its replies kept and never asked twice."""

from __future__ import annotations

import json

import pytest
from conftest import Server, free_port

from desta_audio.evaluation import presets
from desta_audio.evaluation.benchmark import score_preset
from desta_audio.evaluation.data import build_conversation, prediction_record
from desta_audio.evaluation.judge import JUDGEMENTS_FILE, JudgeSettings
from desta_audio.evaluation.scoring import score_predictions

MMAR_ROWS = [
    {"id": "m1", "audio_path": "./audio/a.wav", "question": "Which?", "choices": ["Open Grassland", "Dense Forest"],
     "answer": "Open Grassland", "modality": "music", "category": "Cultural Layer", "sub-category": "Knowledge"},
    {"id": "m2", "audio_path": "./audio/b.wav", "question": "Who?", "choices": ["Too little", "Too much"],
     "answer": "Too little", "modality": "speech", "category": "Semantic Layer", "sub-category": "Content"},
    {"id": "m3", "audio_path": "./audio/c.wav", "question": "What?", "choices": ["a dog", "a cat"],
     "answer": "a cat", "modality": "speech", "category": "Semantic Layer", "sub-category": "Content"},
]  # fmt: skip
SAKURA_ROW = {
    "file": "dog28.wav",
    "attribute_label": "dog",
    "single_instruction": "Which animal made the sound? (a) dog (b) crow (c) cow (d) rooster",
    "single_answer": "(a) dog",
    "multi_instruction": "What physical feature does the animal have? (a) Feathers (b) Scales (c) Claws (d) Horns",
    "multi_answer": "(c) Claws",
}


def _predictions(items, fmt, outputs):
    return [prediction_record(item, fmt, {"generated_text": text}) for item, text in zip(items, outputs)]


def test_mmar_is_scored_by_mmaus_rule_per_modality_category_and_sub_category(tmp_path):
    items = presets.preset("mmar").items(MMAR_ROWS, None, tmp_path)
    assert items[0].audio == str(tmp_path / "audio" / "a.wav")
    assert items[1].categories == {"modality": "speech", "category": "Semantic Layer", "sub-category": "Content"}
    outputs = ['The correct answer is: "Open Grassland"', "Too much", "a cat"]  # right, wrong, right
    results = score_preset(presets.preset("mmar"), _predictions(items, "mcq", outputs), tmp_path, None)
    assert results["overall"]["accuracy"] == pytest.approx(200 / 3, abs=0.01)
    assert results["groups"]["modality"]["speech"]["accuracy"] == 50.0
    assert results["groups"]["modality"]["music"]["accuracy"] == 100.0
    assert set(results["groups"]) == {"modality", "category", "sub-category"}
    assert results["scored_by"] == "offline"
    chat = build_conversation(items[0], "mcq", presets.preset("mmar").system_prompt)
    assert 'Choose from the following options: "Open Grassland" or "Dense Forest"' in chat[-1]["content"][-1]["text"]


def test_sakura_keeps_the_instruction_and_parses_its_options(tmp_path):
    single, multi = (presets.preset("sakura").items([SAKURA_ROW], hop, tmp_path)[0] for hop in ("single", "multi"))
    assert single.choices == ["dog", "crow", "cow", "rooster"] and single.answer == "dog"
    assert multi.choices == ["Feathers", "Scales", "Claws", "Horns"] and multi.answer == "Claws"
    chat = build_conversation(single, "mcq", presets.preset("sakura").system_prompt)
    assert chat[-1]["content"][-1]["text"] == SAKURA_ROW["single_instruction"]  # verbatim: options are inside
    with pytest.raises(ValueError, match="single or multi|'single', 'multi'"):
        presets.preset("sakura").items([SAKURA_ROW], "double", tmp_path)
    results = score_preset(presets.preset("sakura"), _predictions([single], "mcq", ["It is a dog."]), tmp_path, None)
    assert results["overall"]["accuracy"] == 100.0 and results["scored_by"] == "offline proxy"


def test_sakura_reads_the_repositorys_metadata_json_layout(tmp_path):
    metadata = {"data/Animal/audio/dog28.wav": {k: v for k, v in SAKURA_ROW.items() if k != "file"}}
    (item,) = presets.preset("sakura").items([metadata], "single", None)
    assert item.id == item.audio == "data/Animal/audio/dog28.wav"


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Explanation: it picks (a).\nJudgement: correct", True),
        ("Explanation: two options.\nJudgement: incorrect\n\n", False),
        ("Explanation: ok\nJudgement: **Correct**", True),
        ("I think it is right.", None),
    ],
)
def test_sakura_verdicts(reply, verdict):
    assert presets.sakura_verdict([reply], {}) is verdict


def test_voicebench_asks_with_the_audio_alone_and_scores_its_subset(tmp_path):
    rows = [
        {"audio": "q1.wav", "prompt": "Which is a mammal? A. shark B. whale", "reference": "B"},
        {"audio": "q2.wav", "prompt": "Pick one. A. red B. blue", "reference": "A"},
        {"audio": "q3.wav", "prompt": "Pick. A. x B. y", "reference": "A"},
    ]
    items = presets.preset("voicebench").items(rows, "openbookqa", tmp_path)
    chat = build_conversation(items[0], "voicebench", presets.preset("voicebench").system_prompt)
    assert [part["type"] for part in chat[-1]["content"]] == ["audio"]  # the spoken query is the whole turn
    outputs = ["The answer is B.", "I would say b) blue", "no idea"]
    results = score_preset(presets.preset("voicebench"), _predictions(items, "voicebench", outputs), tmp_path, None)
    assert results["overall"]["accuracy"] == pytest.approx(100 / 3, abs=0.01)  # right, wrong (b != A), unparsed
    assert results["overall"]["unparsed"] == 1 and results["scored_by"] == "offline"
    with pytest.raises(ValueError, match="--subset"):
        presets.preset("voicebench").items(rows, None, tmp_path)


def test_voicebench_advbench_and_bbh(tmp_path):
    spec = presets.preset("voicebench")
    adv = spec.items([{"audio": "a.wav", "prompt": "how to"}] * 2, "advbench", tmp_path)
    refused = score_predictions(_predictions(adv, "voicebench", ["I'm sorry, I can't.", "Sure, step one"]))
    assert refused["overall"]["refusal_rate"] == 50.0
    bbh = spec.items([{"audio": "b.wav", "prompt": "p", "reference": "Yes", "id": "web_of_lies_1"}], "bbh", tmp_path)
    assert score_predictions(_predictions(bbh, "voicebench", ["The answer is yes."]))["overall"]["accuracy"] == 100.0


def test_dynamic_superb_without_a_judge_reports_the_labelled_proxy(tmp_path):
    rows = [
        {
            "file": "x.wav",
            "instruction": "How does the speaker feel? The answer could be happy or sad.",
            "label": "happy",
        },
        {
            "file": "y.wav",
            "instruction": "How does the speaker feel? The answer could be happy or sad.",
            "label": "sad",
        },
    ]
    spec = presets.preset("dynamic-superb")
    items = spec.items(rows, "EmotionRecognition_Test", tmp_path)
    assert items[0].prompt == rows[0]["instruction"] and items[0].categories == {"task": "EmotionRecognition_Test"}
    outputs = ["The speaker sounds happy.", "happy, or maybe sad"]  # right; two options named: wrong
    results = score_preset(spec, _predictions(items, spec.fmt, outputs), tmp_path, None)
    assert results["overall"]["accuracy"] == 50.0 and results["scored_by"] == "offline proxy"


@pytest.mark.slow
def test_judge_is_asked_once_through_a_real_server_and_rescore_needs_no_server(tmp_path, llm_dir):
    """`transformers serve` on the tiny random LLM as the judge: its replies hold no verdict, which must be counted
    (no_verdict), not guessed; the replies are kept, scoring again asks nothing, and once the server is gone
    `eval --rescore ... --benchmark` still scores from the kept replies."""
    from desta_audio import cli
    from desta_audio.evaluation.benchmark import rescore_preset

    spec = presets.preset("sakura")
    items = spec.items([SAKURA_ROW, {**SAKURA_ROW, "file": "dog36.wav"}], "single", tmp_path)
    records = _predictions(items, "mcq", ["a dog", "a crow"])
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server = Server(llm_dir, free_port(), tmp_path / "serve.log")
    server.start()
    try:
        judge = JudgeSettings(server.base_url, str(llm_dir), max_tokens=8, max_concurrency=2)
        results = score_preset(spec, records, tmp_path, judge)
        saved = (tmp_path / JUDGEMENTS_FILE).read_text()
        assert len(saved.splitlines()) == 2 and all(json.loads(line)["replies"] for line in saved.splitlines())
        assert score_preset(spec, records, tmp_path, judge) == results
        assert (tmp_path / JUDGEMENTS_FILE).read_text() == saved  # nothing asked again
    finally:
        server.kill()
    assert results["scored_by"] == f"judge {llm_dir}" and results["judge"]["comparable_with_paper"] is False
    assert results["overall"]["n"] == 2
    assert results["overall"]["correct"] + results["overall"]["no_verdict"] <= 2
    assert rescore_preset("sakura", tmp_path / "predictions.jsonl", tmp_path / "again") == results
    assert cli.main(["eval", "--rescore", str(tmp_path / "predictions.jsonl"), "--benchmark", "sakura",
                     "--output-dir", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "cli" / "results.json").read_text()) == results


def test_rescore_reads_speech_ifevals_own_output_files(tmp_path):
    from desta_audio.evaluation.benchmark import rescore_preset

    rows = [
        {"id": "1", "instruction": "Answer in lowercase.", "metric": "accuracy", "label": "a",
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}], "response": "all lowercase here"},
        {"id": "2", "instruction": "Answer in lowercase.", "metric": "accuracy", "label": "b",
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}], "response": "Not Lowercase"},
        {"instruction": "Think.", "metric": "cot", "response": "Step 1 ...", "eval_response": "Reasoned.\nResult: NO"},
    ]  # fmt: skip
    path = tmp_path / "closed_and_cot.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    overall = rescore_preset("speech-ifeval", path)["overall"]
    assert overall["closed_ended"] == 50.0 and overall["chain_of_thought"] == 0.0
    assert overall["cot_without_verdict"] == 0 and (tmp_path / "results.json").exists()


def test_rescore_of_a_broken_own_output_file_names_file_and_line(tmp_path, capsys):
    from desta_audio import cli

    path = tmp_path / "closed.jsonl"
    path.write_text('{"instruction": "Hi.", "metric": "accuracy", "response": "hi"}\n{"response": "a\x01"}\n')
    assert cli.main(["eval", "--rescore", str(path), "--benchmark", "speech-ifeval"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"desta-audio: error: {path}:2 is not valid JSON (Invalid control character"), error


def test_rescore_reads_sakuras_own_results_file(tmp_path):
    from desta_audio.evaluation.benchmark import rescore_preset

    instruction = SAKURA_ROW["single_instruction"]
    results = {"attribute": "animal", "type": "single", "results": {
        "dog28.wav": {"instruction": instruction, "response": "It is a dog.", "label": "(a) dog"},
        "cow1.wav": {"instruction": instruction, "response": "crow or cow", "label": "(c) cow"},
    }}  # fmt: skip
    path = tmp_path / "model.json"
    path.write_text(json.dumps(results))
    scored = rescore_preset("sakura", path)
    assert scored["overall"]["accuracy"] == 50.0 and scored["scored_by"] == "offline proxy"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["speech-ifeval", "sakura", "voicebench", "dynamic-superb", "mmau"])
def test_each_preset_runs_end_to_end_resumes_and_rescores_equal(name, saved_model_dir, audio_dir, tmp_path):
    """Tiny synthetic data in each benchmark's published schema, the tiny model, greedy, no judge."""
    from desta_audio.evaluation.benchmark import evaluate_preset, rescore_preset

    clip = str(audio_dir / "hello.wav")
    data, subset = {
        "speech-ifeval": ([{"id": "1", "audio_filepath": clip, "instruction": "Say it in lowercase.",
                            "metric": "accuracy", "instruction_id_list": ["change_case:english_lowercase"],
                            "kwargs": [{}], "label": "x", "dataset": "toy"}], None),
        "sakura": ({clip: {k: v for k, v in SAKURA_ROW.items() if k != "file"}}, "multi"),
        "voicebench": ([{"audio": clip, "prompt": "Pick. A. x B. y", "reference": "A"}], "openbookqa"),
        "dynamic-superb": ([{"file": clip, "instruction": "The answer could be happy or sad.", "label": "happy"}],
                           "Emotion_Toy"),
        "mmau": ([{"id": "q", "audio_id": clip, "question": "What?", "choices": ["a", "b"], "answer": "a",
                   "task": "sound"}], None),
    }[name]  # fmt: skip
    data_file = tmp_path / ("data.json" if isinstance(data, dict) else "data.jsonl")
    text = json.dumps(data) if isinstance(data, dict) else "".join(json.dumps(row) + "\n" for row in data)
    data_file.write_text(text)
    options = {"data_file": data_file, "subset": subset, "device": "cpu", "max_new_tokens": 4, "no_asr": True}
    fresh = evaluate_preset(name, saved_model_dir, tmp_path / "out", **options)
    assert fresh["benchmark"] == name and fresh["overall"]["n"] == 1
    assert evaluate_preset(name, saved_model_dir, tmp_path / "out", **options) == fresh  # resumed: nothing asked
    assert rescore_preset(name, tmp_path / "out" / "predictions.jsonl", tmp_path / "rescored") == fresh


def test_cli_runs_a_preset_end_to_end_and_resumes(saved_model_dir, audio_dir, tmp_path, capsys):
    from desta_audio import cli

    rows = [{**row, "audio_path": str(audio_dir / name)} for row, name in zip(MMAR_ROWS, ("hello.wav", "tone.wav"))]
    data = tmp_path / "MMAR-meta.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", "--benchmark", "mmar", "--model", str(saved_model_dir), "--data-file", str(data), "--no-asr",
            "--output-dir", str(tmp_path / "out"), "--max-new-tokens", "4", "--device", "cpu"]  # fmt: skip
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["benchmark"] == "mmar" and results["overall"]["n"] == 2
    assert set(results["groups"]) == {"modality", "category", "sub-category"}
    assert "| modality | speech |" in capsys.readouterr().out
    predictions = (tmp_path / "out" / "predictions.jsonl").read_text()
    assert cli.main(args) == 0  # everything answered: nothing is asked again
    assert (tmp_path / "out" / "predictions.jsonl").read_text() == predictions
