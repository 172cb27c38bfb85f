"""Headlines over several preset runs (`eval --combine`), against hand-computed numbers."""

from __future__ import annotations

import json

import pytest

from desta_audio import cli
from desta_audio.evaluation.combine import combine_runs as combine


def _run(folder, name, **results):
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"groups": {}, "overall": {}, **results}))
    return path


def test_sakura_per_hop_is_the_mean_over_its_tracks(tmp_path):
    runs = [
        _run(tmp_path, f"{track}-{hop}", benchmark="sakura", source=f"SLLM-multi-hop/{track}QA", subset=hop,
             groups={"hop": {hop: {"accuracy": accuracy}}})
        for track, hop, accuracy in [("Animal", "single", 90.0), ("Emotion", "single", 60.0),
                                     ("Gender", "single", 80.0), ("Language", "single", 70.0),
                                     ("Animal", "multi", 50.0), ("Gender", "multi", 40.0)]
    ]  # fmt: skip
    combined = combine("sakura", runs)
    assert combined["per_hop"] == {"multi": 45.0, "single": 75.0}
    assert combined["per_track"]["Animal"] == {"single": 90.0, "multi": 50.0}
    assert combined["missing_tracks"] == {"multi": ["Emotion", "Language"]}
    with pytest.raises(ValueError, match="Two runs score SAKURA's Animal track"):
        combine("sakura", [runs[0], runs[0]])


def test_voicebench_overall_only_with_all_nine_columns(tmp_path):
    columns = {"alpacaeval_full": ("score", 4.5), "commoneval": ("score", 4.0), "wildvoice": ("score", 4.1),
               "sd-qa": ("gpt_score", 60.0), "mmsu": ("accuracy", 55.0), "openbookqa": ("accuracy", 70.0),
               "bbh": ("accuracy", 60.0), "advbench": ("refusal_rate", 98.0)}  # fmt: skip
    runs = [_run(tmp_path, s, benchmark="voicebench", subset=s, overall={m: v}) for s, (m, v) in columns.items()]
    partial = combine("voicebench", runs)
    assert partial["columns"]["alpacaeval"] == 4.5 and partial["columns"]["advbench"] == 98.0
    # ifeval is scored by IFEval's own checkers, not here: without its column there is no Overall to report.
    assert partial["overall"] is None and partial["missing_columns"] == ["ifeval"]
    assert partial["comparable_with_leaderboard"] is False  # sd-qa here is the judge's half only
    unscored = _run(tmp_path, "open", benchmark="voicebench", subset="commoneval", overall={"n": 3})
    with pytest.raises(ValueError, match="'commoneval' has no scored column"):
        combine("voicebench", [unscored])


def test_speech_ifeval_ifrate_needs_all_three_parts(tmp_path):
    closed = _run(tmp_path, "c", benchmark="speech-ifeval", overall={"closed_ended": 80.0, "creative_writing": 90.0})
    cot = _run(tmp_path, "t", benchmark="speech-ifeval", overall={"chain_of_thought": 70.0})
    assert combine("speech-ifeval", [closed])["ifrate"] is None
    assert combine("speech-ifeval", [closed, cot])["ifrate"] == 80.0


def test_dynamic_superb_headline_and_the_cli(tmp_path, capsys):
    runs = [
        _run(tmp_path, task, benchmark="dynamic-superb", subset=task, groups={"task": {task: {"accuracy": acc}}})
        for task, acc in [("EmotionRecognition_X", 60.0), ("SpeakerCounting_Y", 40.0), ("Accent_Z", 80.0)]
    ]
    out = tmp_path / "combined"
    assert (
        cli.main(["eval", "--combine", *map(str, runs), "--benchmark", "dynamic-superb", "--output-dir", str(out)]) == 0
    )
    combined = json.loads((out / "combined.json").read_text())
    assert (
        combined["overall"] == 60.0 and combined["num_tasks"] == 3 and json.loads(capsys.readouterr().out) == combined
    )
    mixed = _run(tmp_path, "other", benchmark="sakura")
    with pytest.raises(ValueError, match="not of the dynamic-superb preset"):
        combine("dynamic-superb", [runs[0], mixed])
    with pytest.raises(ValueError, match="scored in one run"):
        combine("mmar", runs)
