"""The lab: deterministic labelled clips, a metadata CSV the dataset builder reads as it is, labels records, the
instruction pool and the probe's questions; train and probe share no sentence, voice or setting."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from desta_audio import testing as tiny_assets
from desta_audio.cli import main
from desta_audio.data.descriptions import load_instructions
from desta_audio.data.sources import SourceColumns, folder_source, prepare_row
from desta_audio.lab import ATTRIBUTE_COLUMNS, write_split
from desta_audio.lab.catalog import SETTINGS
from desta_audio.lab.plan import MAX_CLIPS, clip_counts, plan_clips
from desta_audio.lab.questions import TASK_SPECS, instruction_pool
from desta_audio.lab.sentences import draw_sentences, sentence_split

pytestmark = pytest.mark.skipif(not tiny_assets.tools_available(), reason="needs espeak-ng and sox")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    write_split(root, "train", 40, seed=3)
    write_split(root, "probe", 30, seed=3)
    return root


def test_splits_share_no_sentence_voice_or_setting():
    train, probe = draw_sentences(400, "train", 0), draw_sentences(100, "probe", 0)
    assert len(set(train)) == 400 and not set(train) & set(probe)
    assert all(sentence_split(s) == "probe" for s in probe)
    assert draw_sentences(50, "train", 1) != draw_sentences(50, "train", 0)  # the seed picks among them
    held, seen = SETTINGS["probe"], SETTINGS["train"]
    for sex, voices in held.voices.items():
        assert not set(voices) & {v for vs in seen.voices.values() for v in vs}, sex
    for speed, rates in held.words_per_minute.items():
        assert not set(rates) & set(seen.words_per_minute[speed])
    assert not {f for fs in held.tone_hz.values() for f in fs} & {f for fs in seen.tone_hz.values() for f in fs}
    assert not set(held.seconds) & set(seen.seconds)


def test_plan_is_deterministic_and_groups_are_minimal_pairs():
    clips = plan_clips("train", 100, seed=5)
    assert clips == plan_clips("train", 100, seed=5) and clips != plan_clips("train", 100, seed=6)
    counts = clip_counts(100)
    assert (
        len(clips)
        == 100
        == 2 * counts["twins"] + 3 * counts["triplets"] + counts["tones"] + counts["noise"] + (counts["silence"])
    )
    twins = [c for c in clips if c.group.startswith("twin-")]
    for male, female in zip(twins[::2], twins[1::2]):
        assert (male.sex, female.sex) == ("Male", "Female")
        assert male.text == female.text and male.words_per_minute == female.words_per_minute
    triplets = [c for c in clips if c.group.startswith("triplet-")]
    for slow, normal, fast in zip(triplets[::3], triplets[1::3], triplets[2::3]):
        assert (slow.speed, normal.speed, fast.speed) == ("Slow", "Normal", "Fast")
        assert slow.text == normal.text == fast.text and slow.voice == normal.voice == fast.voice
        assert slow.words_per_minute < normal.words_per_minute < fast.words_per_minute
    tones = [c for c in clips if c.kind == "tone"]
    assert {c.pitch for c in tones} == {"Low", "High"}
    assert max(c.hz for c in tones if c.pitch == "Low") < min(c.hz for c in tones if c.pitch == "High")


@pytest.mark.parametrize("size", [0, 19, MAX_CLIPS + 1])
def test_absurd_sizes_are_refused(size, tmp_path):
    with pytest.raises(ValueError, match="holds 20 to"):
        write_split(tmp_path, "train", size)
    assert not (tmp_path / "train").exists()


def test_the_builder_reads_the_metadata_as_it_is(lab):
    """The builder's own source and description code on the lab's CSV: speech gets its transcript and attributes,
    a tone its pitch, noise its colour, silence nothing but its category."""
    source = folder_source(lab / "train", lab / "train" / "metadata.csv", "file", None)
    columns = SourceColumns(audio="file", transcript="transcript", attributes=ATTRIBUTE_COLUMNS)
    ids = source.ids(columns)
    described = {
        row["file"]: prepare_row(source, row, i, ids[i], columns).description() for i, row in enumerate(source.rows)
    }
    by_kind = {kind: [d for f, d in described.items() if f"/{kind}-" in f] for kind in ("twin", "tone", "noise")}
    assert by_kind["twin"][0].startswith("[00:00-00:0")
    assert (
        "(Gender: Male, Speaking speed: " in by_kind["twin"][0]
        and ", Audio category: Speech, Duration: " in (by_kind["twin"][0])
    )
    assert "(Audio category: Tone, Pitch: " in by_kind["tone"][0] and " Hz, Duration: " in by_kind["tone"][0]
    assert any("(Audio category: Pink noise, Duration: " in d for d in by_kind["noise"])
    silence = next(d for f, d in described.items() if "/silence-" in f)
    assert silence.endswith("(Audio category: Silence, Duration: " + silence.split("Duration: ")[1])
    assert source.rows[0]["transcript"] in by_kind["twin"][0]


def test_labels_state_the_metadata_attribute_for_each_applicable_task(lab):
    rows = {row["file"]: row for row in csv.DictReader((lab / "train" / "metadata.csv").open())}
    records = [json.loads(line) for line in (lab / "train" / "labels.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in records}) == len(records)
    expected = {"speech": {"sex", "rate", "sound", "content"}, "tone": {"sound", "pitch"}, "noise": {"sound"}}
    for record in records:
        user = record["messages"][-1]["content"]
        audio, question = user[0], user[1]["text"]
        row = rows[audio["path"]]
        assert record["task"] in expected.get(row["sound_type"], {"sound"})
        assert question in TASK_SPECS[record["task"]].paraphrases
        assert audio["transcript"] == row["transcript"]
        assert (lab / "train" / audio["path"]).is_file()
    by_id = {r["id"]: r["response"] for r in records}
    female = next(f for f, row in rows.items() if row["gender"] == "Female")
    stem = female.removeprefix("audio/").removesuffix(".wav")
    assert by_id[f"{stem}-sex"] == "The speaker is female."
    assert by_id[f"{stem}-sound"] == "This is speech."
    assert by_id[f"{stem}-content"] == f'The speaker says: "{rows[female]["transcript"]}"'
    tone = next(f for f, row in rows.items() if row["pitch"] == "Low")
    assert by_id[tone.removeprefix("audio/").removesuffix(".wav") + "-pitch"] == "This is a low tone."
    assert load_instructions(lab / "train" / "instructions.txt") == instruction_pool()


def test_probe_questions(lab):
    records = [json.loads(line) for line in (lab / "probe" / "probe.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in records}) == len(records)
    assert {r["task"] for r in records} == {"sex", "rate", "sound", "pitch", "content"}
    for record in records:
        assert record["answer"] in record["choices"] and (lab / "probe" / record["audio_id"]).is_file()
        assert record["question"] not in instruction_pool()  # the probe's wording is never trained on
    twins = {}
    for record in (r for r in records if r["task"] == "sex"):
        twins.setdefault(record["group"], []).append(record)
    assert all(sorted(r["answer"] for r in pair) == ["Female", "Male"] for pair in twins.values())
    content = [r for r in records if r["task"] == "content"]
    assert all(len(r["choices"]) == 4 and r["answer"] == r["transcript"] for r in content)
    train_sentences = {row["transcript"] for row in csv.DictReader((lab / "train" / "metadata.csv").open())}
    assert not {r["transcript"] for r in records} & train_sentences - {""}


def test_same_seed_same_bytes_and_foreign_folders_are_kept(lab, tmp_path):
    write_split(tmp_path, "probe", 30, seed=3)
    for name in ("metadata.csv", "probe.jsonl", "audio/twin-0000-female.wav", "audio/noise-0001.wav"):
        assert _digest(tmp_path / "probe" / name) == _digest(lab / "probe" / name), name
    write_split(tmp_path, "probe", 20, seed=3)  # a lab folder is rewritten whole: no clip of the larger run stays
    assert len(list((tmp_path / "probe" / "audio").iterdir())) == 20
    foreign = tmp_path / "mine" / "train"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_split(tmp_path / "mine", "train", 20)
    assert (foreign / "notes.txt").read_text() == "keep me"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli(tmp_path, capsys):
    assert main(["lab", str(tmp_path / "lab"), "--splits", "probe", "--probe-clips", "20", "--seed", "1"]) == 0
    assert "20 clips" in capsys.readouterr().out
    assert (tmp_path / "lab" / "probe" / "probe.jsonl").is_file() and not (tmp_path / "lab" / "train").exists()
    assert main(["lab", str(tmp_path / "big"), "--train-clips", "100000"]) == 2
    assert "holds 20 to 10000 clips" in capsys.readouterr().err
