"""build_dataset.py and desta_audio.data: seed descriptions, records, determinism, resume, shards, bad rows."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from desta_audio import testing as tiny_assets
from desta_audio.data import build_main
from desta_audio.data.arguments import parse_args
from desta_audio.data.builder import BuildOptions
from desta_audio.data.builder import build as run_build
from desta_audio.data.descriptions import (
    DEFAULT_INSTRUCTIONS,
    attribute_name,
    generation_messages,
    load_instructions,
    parse_segments,
    pick_instruction,
    seed_description,
)
from desta_audio.data.engines import TransformersGenerator, VLLMGenerator, WhisperTranscriber
from desta_audio.data.sources import SourceColumns, folder_source
from desta_audio.data.store import merge_records, record_files, shard_file

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 6
SPEECH = {"hello.wav": "hello world", "numbers.wav": "one two three"}
TONES = {f"tone_{i}.wav": 1.0 + 0.5 * (i % 4) for i in range(10)}
EXCUSE_ME = "[00:00-00:02] Excuse me? (Emotion: Neutral, Gender: Female, Pitch: Very high, Volume: Low, Speaking speed: Very slow, Duration: 2s)"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def good_rows() -> list[dict]:
    speech = [
        {"file": name, "text": text, "gender": "Male", "speaking_speed": "Normal"} for name, text in SPEECH.items()
    ]
    tones = [{"file": name, "text": "", "gender": None, "speaking_speed": None} for name in TONES]
    return speech + tones


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Real clips (espeak speech, sox tones), a corrupt file, a clean metadata file and one with bad rows."""
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required")
    root = tmp_path_factory.mktemp("corpus")
    for name, text in SPEECH.items():
        tiny_assets.speak(root / name, text)
    for i, (name, seconds) in enumerate(TONES.items()):
        tiny_assets.sox_synth(root / name, seconds, freq=300 + 40 * i)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt this is not audio")
    write_jsonl(root / "clean.jsonl", good_rows())
    bad = [
        {"file": "corrupt.wav", "text": "broken", "gender": "Male", "speaking_speed": "Fast"},
        {"file": "absent.wav", "text": "gone", "gender": "Male", "speaking_speed": "Fast"},
        {"file": "numbers.wav", "text": "one two three", "speaking_speed": "Fast", "id": "no-gender"},
    ]
    write_jsonl(
        root / "with_bad.jsonl",
        [{**row, "id": row["file"]} for row in good_rows()] + [{"id": r["file"], **r} for r in bad],
    )
    return root


@pytest.fixture(scope="module")
def generator(llm_dir):
    return TransformersGenerator.from_pretrained(llm_dir, device="cpu", max_new_tokens=MAX_NEW_TOKENS)


COLUMNS = SourceColumns(audio="file", transcript="text", attributes=("gender", "speaking_speed"))


def build(corpus: Path, out: Path, generator, metadata="clean.jsonl", columns=COLUMNS, transcriber=None, **options):
    source = folder_source(corpus, corpus / metadata, columns.audio, "toy")
    options = BuildOptions(output_dir=out, instructions=load_instructions(), progress=False, **options)
    return run_build(source, columns, generator, options, transcriber)


def all_records(out: Path) -> list[dict]:
    """Every line of every shard file; json.loads fails on any torn or partial line."""
    return [json.loads(line) for path in record_files(out) for line in path.read_text().splitlines()]


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


# ----------------------------------------------------------------------------- seed descriptions


def test_seed_description_speech_matches_the_release_format():
    attributes = {
        "emotion": "Neutral",
        "gender": "Female",
        "pitch": "Very high",
        "volume": "Low",
        "speaking_speed": "Very slow",
    }
    assert seed_description(2.3, "Excuse me?", attributes) == EXCUSE_ME


def test_seed_description_non_speech_has_only_the_parenthesis():
    assert (
        seed_description(10.0, None, {"audio_category": "door_wood_knock"})
        == "[00:00-00:10] (Audio category: door_wood_knock, Duration: 10s)"
    )
    assert (
        seed_description(4.49, "", {"audio_category": "rain", "snr": None, "mood": float("nan"), "tag": " "})
        == "[00:00-00:04] (Audio category: rain, Duration: 4s)"
    )


def test_seed_description_multi_segment_one_line_each():
    segments = parse_segments(
        json.dumps(
            [
                {"start": 0.0, "end": 2.4, "text": "Hi, how are you?", "speaker": "A"},
                {"start": 2.4, "end": 3.5, "text": "", "speaker": None},
                {
                    "start": 62.0,
                    "end": 75.6,
                    "text": "Fine, thanks.",
                    "speaker": "B",
                    "emotion": "Happy",
                    "words": [1, 2],
                },
            ]
        )
    )
    assert seed_description(80.0, None, {"language": "English"}, segments) == (
        "[00:00-00:02] Hi, how are you? (Speaker: A, Language: English, Duration: 2s)\n"
        "[00:02-00:04] (Language: English, Duration: 1s)\n"
        "[01:02-01:16] Fine, thanks. (Speaker: B, Emotion: Happy, Language: English, Duration: 14s)"
    )
    as_columns = {"start": [0.0, 1.5], "end": [1.5, 2.5], "text": ["a", "b"], "speaker": ["S1", "S2"]}
    assert [s.attributes for s in parse_segments(as_columns)] == [{"speaker": "S1"}, {"speaker": "S2"}]


@pytest.mark.parametrize(
    ("column", "name"),
    [
        ("gender", "Gender"),
        ("speaking_speed", "Speaking speed"),
        ("audio_category", "Audio category"),
        ("SNR", "SNR"),
        ("Pitch", "Pitch"),
    ],
)
def test_attribute_names_are_title_cased_from_columns(column, name):
    assert attribute_name(column) == name


# ----------------------------------------------------------------------------- instructions


def test_shipped_instruction_pool_is_large_and_unique():
    lines = [line.strip() for line in DEFAULT_INSTRUCTIONS.read_text().splitlines()]
    assert all(lines) and len(lines) >= 200
    assert len(set(lines)) == len(lines)
    assert load_instructions() == lines


def test_instruction_choice_depends_only_on_seed_and_row():
    pool = load_instructions()
    ids = [f"clip_{i}.wav" for i in range(400)]
    forward = [pick_instruction(pool, 7, i) for i in ids]
    backward = [pick_instruction(pool, 7, i) for i in reversed(ids)][::-1]
    assert forward == backward
    assert len(set(forward)) > 100  # spread over the pool
    assert forward != [pick_instruction(pool, 8, i) for i in ids]


# ----------------------------------------------------------------------------- records


def test_records_have_the_aqa5m_schema_and_load_with_datasets(corpus, generator, tmp_path, tokenizer):
    import datasets

    summary = build(corpus, tmp_path, generator, batch_size=4)
    assert summary.written == len(good_rows()) and not summary.skipped
    merge_records(tmp_path)
    records = by_id(all_records(tmp_path))
    assert sorted(records) == sorted(r["file"] for r in good_rows())

    hello = records["hello.wav"]
    assert list(hello) == ["id", "dataset", "audio", "transcript", "seed_description", "prompt", "response", "messages"]
    seconds = round(soundfile.info(corpus / "hello.wav").duration)
    assert (
        hello["seed_description"]
        == f"[00:00-00:{seconds:02d}] hello world (Gender: Male, Speaking speed: Normal, Duration: {seconds}s)"
    )
    assert hello["dataset"] == "toy" and hello["transcript"] == "hello world"
    assert hello["audio"] == str(corpus.resolve() / "hello.wav")  # the source's own file, by absolute path
    assert hello["prompt"] in load_instructions() and hello["response"]
    assert hello["messages"] == [
        {"role": "system", "content": "Focus on the audio clips and instructions.", "audios": []},
        {"role": "user", "content": f"<|AUDIO|>\n\n{hello['prompt']}", "audios": [{"text": "hello world"}]},
    ]
    assert records["tone_1.wav"]["seed_description"] == "[00:00-00:02] (Duration: 2s)"  # 1.5 s, read from the audio
    assert records["tone_1.wav"]["messages"][1]["audios"] == [{"text": ""}]

    from_json = datasets.load_dataset("json", data_files=[str(p) for p in record_files(tmp_path)], split="train")
    from_disk = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert from_disk.features["audio"] == datasets.Audio(sampling_rate=16000)
    for loaded in (from_json, from_disk.remove_columns("audio")):
        assert len(loaded) == len(records)
        for row in loaded:
            assert row == {k: v for k, v in records[row["id"]].items() if k in row}  # no null keys in messages
    embedded = from_disk.cast_column("audio", datasets.Audio(decode=False))[from_disk["id"].index("hello.wav")]
    assert embedded["audio"]["bytes"] == (corpus / "hello.wav").read_bytes()  # decodes on any machine
    decoded = from_disk[from_disk["id"].index("hello.wav")]["audio"].get_all_samples()
    assert decoded.sample_rate == 16000 and decoded.data.shape[-1] == soundfile.info(corpus / "hello.wav").frames

    rendered = render_training_chat(tokenizer, from_disk[0])
    assert rendered.count(tokenizer.bos_token) == 1
    assert tokenizer.decode(tokenizer(rendered, add_special_tokens=False)["input_ids"]) == rendered
    assert from_disk[0]["prompt"] in rendered and rendered.endswith(from_disk[0]["response"].strip() + "<|eot_id|>")


def render_training_chat(tokenizer, record: dict) -> str:
    """The record's chat with its response, through a plain-text chat template (audio as <start_audio>transcript<end_audio>)."""

    def text_of(message):
        for entry in message["audios"]:
            message = {
                **message,
                "content": message["content"].replace("<|AUDIO|>", f"<start_audio>{entry['text']}<end_audio>", 1),
            }
        return message["content"]

    chat = [{"role": m["role"], "content": text_of(m)} for m in record["messages"]]
    return tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": record["response"]}], tokenize=False)


def test_merged_record_trains_through_the_collator_without_audio_root(
    corpus, generator, tmp_path, llm_dir, whisper_dir
):
    """The merged dataset's Audio column feeds the collator from any working directory, no --audio_root."""
    import datasets

    from desta_audio.training.collator import DestaSFTCollator
    from processing import DestaProcessor

    build(corpus, tmp_path, generator, batch_size=4)
    merge_records(tmp_path)
    loaded = datasets.load_from_disk(str(tmp_path / "dataset"))
    record = loaded[loaded["id"].index("hello.wav")]
    processor = DestaProcessor.from_components(llm_dir, whisper_dir, num_audio_queries=8)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token
    batch = DestaSFTCollator(processor)([record])
    text = processor.decode(batch["input_ids"][0])
    audio_span = f"<start_audio>{processor.audio_token * 8}hello world<end_audio>"
    assert "Focus on the audio clips and instructions.<|eot_id|>" in text
    assert f"user<|end_header_id|>\n\n{audio_span}\n\n{record['prompt']}<|eot_id|>" in text
    assert text.endswith(f"assistant<|end_header_id|>\n\n{record['response'].strip()}<|eot_id|>")
    assert batch["input_features"].shape[0] == 1


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_output_and_batching_does_not_change_greedy_responses(corpus, generator, tmp_path):
    build(corpus, tmp_path / "a", generator, batch_size=4, seed=3)
    build(corpus, tmp_path / "b", generator, batch_size=4, seed=3)
    build(corpus, tmp_path / "one_by_one", generator, batch_size=1, seed=3)
    build(corpus, tmp_path / "other_seed", generator, batch_size=4, seed=4)
    a, b = (shard_file(tmp_path / d, 0, 1).read_bytes() for d in ("a", "b"))
    assert a == b
    batched, single = by_id(all_records(tmp_path / "a")), by_id(all_records(tmp_path / "one_by_one"))
    assert {k: r["response"] for k, r in batched.items()} == {k: r["response"] for k, r in single.items()}
    assert len({r["response"] for r in batched.values()}) > 1  # distinct prompts gave distinct answers
    assert [r["prompt"] for r in batched.values()] != [
        by_id(all_records(tmp_path / "other_seed"))[k]["prompt"] for k in batched
    ]


def test_sampled_generation_is_reproducible_with_a_seed(llm_dir):
    sampler = TransformersGenerator.from_pretrained(
        llm_dir, device="cpu", max_new_tokens=12, temperature=1.5, top_p=0.95
    )
    chats = [
        generation_messages(EXCUSE_ME, "What is said?"),
        generation_messages("[00:00-00:03] (Duration: 3s)", "Describe it."),
    ]
    first, again = sampler.generate(chats, seed=11), sampler.generate(chats, seed=11)
    assert first == again
    assert any(sampler.generate(chats, seed=s) != first for s in range(12, 16))


# ----------------------------------------------------------------------------- resume and shards


SLOW_BUILD = """
import runpy, sys, time
from desta_audio.data.engines import TransformersGenerator
generate = TransformersGenerator.generate
def slow_generate(self, *args, **kwargs):
    time.sleep(0.5)
    return generate(self, *args, **kwargs)
TransformersGenerator.generate = slow_generate
sys.argv[0] = "build_dataset.py"
runpy.run_path("build_dataset.py", run_name="__main__")
"""


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_repeating_rows(corpus, generator, llm_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        "--audio-dir", str(corpus), "--metadata", str(corpus / "clean.jsonl"), "--audio-column", "file",
        "--transcript-column", "text", "--attribute-columns", "gender,speaking_speed", "--dataset-label", "toy",
        "--model", str(llm_dir), "--device", "cpu", "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2",
        "--output-dir", str(out),
    ]  # fmt: skip
    shard = shard_file(out, 0, 1)
    run = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, *args], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while (
        not (shard.exists() and shard.read_text().count("\n") >= 2)
        and run.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    stderr = run.communicate()[1]
    assert run.returncode == -signal.SIGKILL, stderr
    before = all_records(out)
    assert 2 <= len(before) < len(good_rows()), "the run should have been killed mid-way"
    with shard.open("a") as handle:
        handle.write('{"id": "tone_9.wav", "dataset": "to')  # what a kill during a write leaves behind

    resumed = subprocess.run(
        [sys.executable, "build_dataset.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    after = all_records(out)
    assert Counter(r["id"] for r in after) == Counter(r["file"] for r in good_rows())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["already_done"] == len(before) and summary["written"] == len(good_rows()) - len(before)

    uninterrupted = tmp_path / "uninterrupted"
    build(corpus, uninterrupted, generator, batch_size=2)
    assert by_id(after) == by_id(all_records(uninterrupted))
    import datasets

    assert sorted(datasets.load_from_disk(str(out / "dataset"))["id"]) == sorted(r["file"] for r in good_rows())


def test_shards_together_cover_every_row_exactly_once(corpus, generator, tmp_path):
    rows = good_rows()
    for k in range(3):
        summary = build(corpus, tmp_path, generator, batch_size=3, num_shards=3, shard_index=k)
        assert summary.shard_rows == len(range(k, len(rows), 3))
        shard_ids = [r["id"] for r in all_records_of(shard_file(tmp_path, k, 3))]
        assert shard_ids == [row["file"] for row in rows[k::3]]
    assert Counter(r["id"] for r in all_records(tmp_path)) == Counter(row["file"] for row in rows)
    assert len(merge_records(tmp_path)) == len(rows)
    rerun = build(corpus, tmp_path, generator, batch_size=3)  # unsharded rerun: everything is done already
    assert rerun.already_done == len(rows) and rerun.written == 0


def all_records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shard_index_must_be_in_range(corpus, generator, tmp_path):
    with pytest.raises(ValueError, match="shard-index"):
        build(corpus, tmp_path, generator, num_shards=2, shard_index=2)


# ----------------------------------------------------------------------------- bad rows


def test_bad_rows_are_skipped_and_counted_with_reasons(corpus, generator, tmp_path):
    columns = SourceColumns(audio="file", transcript="text", attributes=("gender", "speaking_speed"), id="id")
    summary = build(
        corpus, tmp_path, generator, metadata="with_bad.jsonl", columns=columns, batch_size=4, require_transcript=True
    )
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["skipped"] == {
        "unreadable audio": 1,
        "missing audio file": 1,
        "missing column 'gender'": 1,
        "empty transcript": len(TONES),
    }
    assert saved["skipped"] == dict(summary.skipped) and saved["skipped_total"] == 3 + len(TONES)
    reasons = {row["id"]: row["reason"] for row in saved["skipped_rows"]}
    assert (
        reasons["corrupt.wav"] == "unreadable audio"
        and reasons["absent.wav"] == "missing audio file"
        and reasons["no-gender"] == "missing column 'gender'"
    )
    assert sorted(r["id"] for r in all_records(tmp_path)) == sorted(SPEECH)
    assert saved["written"] == len(SPEECH)


def test_a_column_no_row_has_fails_fast(corpus, generator, tmp_path):
    columns = SourceColumns(audio="file", transcript="txt")
    with pytest.raises(ValueError, match=r"\['txt'\] not found.*available"):
        build(corpus, tmp_path, generator, columns=columns)


# ----------------------------------------------------------------------------- other sources, ASR, CLI


def test_datasets_source_from_disk_through_the_cli(corpus, llm_dir, tmp_path):
    import datasets

    clips = [str(corpus / name) for name in ("hello.wav", "tone_0.wav")]
    in_memory = {"array": tiny_assets.sine(2.0), "sampling_rate": 16000}
    dataset = datasets.Dataset.from_dict(
        {"audio": [*clips, in_memory], "category": ["speech", "tone", "sine"]},
        features=datasets.Features(
            {"audio": datasets.Audio(sampling_rate=16000), "category": datasets.Value("string")}
        ),
    )
    dataset.save_to_disk(str(tmp_path / "source"))
    argv = ["--load-from-disk", str(tmp_path / "source"), "--attribute-columns", "category", "--dataset-label", "tones",
            "--model", str(llm_dir), "--device", "cpu", "--max-new-tokens", "4", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert build_main(argv) == 0
    records = by_id(all_records(tmp_path / "out"))
    assert sorted(records) == ["tones/train/0", "tones/train/1", "tones/train/2"]
    # save_to_disk embedded the clips: rows with bytes (or an array) and no file are written once as 16 kHz FLAC
    stored = [Path(records[f"tones/train/{i}"]["audio"]) for i in range(3)]
    assert {path.parent for path in stored} == {(tmp_path / "out" / "audio").resolve()}
    assert soundfile.read(stored[2])[0] == pytest.approx(in_memory["array"], abs=1e-4)
    assert soundfile.read(stored[0])[0] == pytest.approx(soundfile.read(clips[0])[0], abs=1e-4)
    assert records["tones/train/2"]["seed_description"] == "[00:00-00:02] (Category: sine, Duration: 2s)"
    assert records["tones/train/0"]["dataset"] == "tones"


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    flags = [
        "--audio-dir", "--metadata", "--dataset", "--config", "--split", "--load-from-disk", "--audio-column",
        "--transcript-column", "--attribute-columns", "--segments-column", "--id-column", "--dataset-label",
        "--require-transcript", "--model", "--engine", "--base-url", "--api-key-env", "--max-concurrency",
        "--max-retries", "--max-retry-wait", "--tensor-parallel-size", "--no-prefix-cache", "--prompts", "--batch-size", "--max-new-tokens", "--temperature",
        "--top-p", "--seed", "--device", "--dtype", "--asr-model", "--output-dir", "--num-shards", "--shard-index",
        "--merge-only", "--push-to-hub", "--log-level", "--debug",
    ]  # fmt: skip
    for flag in flags:
        assert f"{flag} " in text or f"{flag}," in text, flag


def test_flags_take_both_spellings_and_booleans_are_bare_flags():
    dashed = parse_args(
        ["--audio-dir", "a", "--model", "m", "--output-dir", "o", "--backend", "vllm", "--batch-size", "4",
         "--require-transcript", "--no-prefix-cache"]
    )  # fmt: skip
    underscored = parse_args(
        ["--audio_dir", "a", "--model", "m", "--output_dir", "o", "--engine", "vllm", "--batch_size", "4",
         "--require_transcript", "true", "--no_prefix_cache"]
    )  # fmt: skip
    assert dashed == underscored
    assert dashed.engine == "vllm" and dashed.batch_size == 4 and dashed.require_transcript and dashed.no_prefix_cache
    assert not (dashed.merge_only or dashed.force or dashed.debug or dashed.keep_truncated_answers)


def test_the_resume_fingerprint_keeps_its_keys(tmp_path):
    """build_settings.json of existing folders must keep matching: a key added to the fingerprint refuses them all."""
    metadata = write_jsonl(tmp_path / "meta.jsonl", [{"file": "c0.wav"}])
    args = parse_args(["--metadata", str(metadata), "--model", "m", "--output-dir", str(tmp_path / "out")])
    settings = args.settings(SourceColumns())
    assert sorted(settings) == sorted(
        ["source", "audio_dir", "columns", "dataset_label", "require_transcript", "model", "engine", "prompts_sha256",
         "max_new_tokens", "temperature", "top_p", "seed", "asr_model", "metadata_sha256"]
    )  # fmt: skip
    assert settings["source"] == {
        "dataset": None, "config": None, "split": "train", "load_from_disk": None, "metadata": str(metadata)
    }  # fmt: skip
    truncated = parse_args(["--dataset", "d", "--model", "m", "--output-dir", "o", "--keep-truncated-answers"])
    assert truncated.settings(SourceColumns())["keep_truncated_answers"] is True


def test_asr_fills_missing_transcripts_without_cutting_long_clips(generator, real_whisper_dir, tmp_path):
    """One batch: a short clip and a 33 s clip whose second phrase starts after Whisper's 30 s window."""
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required")
    tiny_assets.speak(tmp_path / "short.wav", "good morning everyone")
    tiny_assets.speak(tmp_path / "door.wav", "please open the door")
    tiny_assets.sox_silence(tmp_path / "gap.wav", 31.0)
    subprocess.run(
        ["sox", *(str(tmp_path / n) for n in ("door.wav", "gap.wav", "short.wav")), str(tmp_path / "long.wav")],
        check=True,
    )
    write_jsonl(tmp_path / "meta.jsonl", [{"file": "long.wav"}, {"file": "short.wav"}])
    source = folder_source(tmp_path, tmp_path / "meta.jsonl", "file", "toy")
    options = BuildOptions(output_dir=tmp_path / "out", instructions=["Transcribe it."], batch_size=2, progress=False)
    transcriber = WhisperTranscriber.from_pretrained(real_whisper_dir, device="cpu", batch_size=2)
    run_build(source, SourceColumns(audio="file"), generator, options, transcriber)
    records = by_id(all_records(tmp_path / "out"))
    words = {
        k: "".join(c for c in r["transcript"].lower() if c.isalpha() or c == " ").split() for k, r in records.items()
    }
    assert words == {
        "long.wav": "please open the door good morning everyone".split(),
        "short.wav": "good morning everyone".split(),
    }
    seconds = round(soundfile.info(tmp_path / "short.wav").duration)
    assert (
        records["short.wav"]["seed_description"]
        == f"[00:00-00:{seconds:02d}] {records['short.wav']['transcript']} (Duration: {seconds}s)"
    )
    assert records["long.wav"]["messages"][1]["audios"] == [{"text": records["long.wav"]["transcript"]}]


def test_vllm_engine_without_vllm_says_how_to_get_it():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            VLLMGenerator("unused")
    else:
        pytest.skip("vLLM is installed")


# ----------------------------------------------------------------------------- user errors, clip length, fingerprint


class EchoGenerator:
    """Answers every conversation with its own instruction: the build loop without a model."""

    def generate(self, conversations, seed=None):
        return [conversation[-1]["content"].split("\n\n")[-1] for conversation in conversations]


def write_clip(path: Path, seconds: float, rate: int = 8000) -> Path:
    soundfile.write(path, np.full(int(seconds * rate), 1000, dtype=np.int16), rate, subtype="PCM_16")
    return path


def echo_build(clips: Path, out: Path, **options):
    source = folder_source(clips, None, "audio", "toy")
    options = BuildOptions(output_dir=out, instructions=load_instructions(), progress=False, **options)
    return run_build(source, SourceColumns(), EchoGenerator(), options)


@pytest.fixture()
def clip_dir(tmp_path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(3):
        write_clip(folder / f"c{i}.wav", 1.0 + i)
    return folder


def cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """build_dataset.py's exit code and last stderr line (argparse's usage lines come before its error line)."""
    try:
        code = build_main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, (err.strip().splitlines() or [""])[-1]


def builder_error_cases(clip_dir: Path, tmp_path: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    source = ["--audio-dir", str(clip_dir), "--model", "m", "--output-dir", str(tmp_path / "out")]
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    broken = tmp_path / "broken"
    echo_build(clip_dir, broken)
    shard = shard_file(broken, 0, 1)
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text(lines[0] + "{garbage\n" + "".join(lines[1:]))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"audio": "c0.wav"}\n' + bytes(range(128, 256)))
    wide = tmp_path / "wide.csv"
    wide.write_text("audio\nc0.wav\n", encoding="utf-16")
    wide_prompts = tmp_path / "prompts.txt"
    wide_prompts.write_text("Describe the audio.\n", encoding="utf-16")
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"audio": "c0.wav"}\n{"audio": "c1\x01.wav"}\n{"audio": "c2.wav"}\n')
    return {
        "batch size 0": ([*source, "--batch-size", "0"], ("--batch-size", "0")),
        "batch size -1": ([*source, "--batch-size", "-1"], ("--batch-size", "-1")),
        "no shards": ([*source, "--num-shards", "0"], ("--num-shards", "0")),
        "merge of nothing": (["--output-dir", str(tmp_path / "empty"), "--merge-only"], ("--merge-only", "empty")),
        "missing metadata": (
            ["--metadata", str(tmp_path / "meta.csv"), "--model", "m", "--output-dir", str(tmp_path / "o")],
            ("--metadata", str(tmp_path / "meta.csv")),
        ),
        "output dir is a file": (
            [*source[:-1], str(tmp_path / "a_file")],
            ("--output-dir", str(tmp_path / "a_file"), "not a folder"),
        ),
        "bad shard line at merge": (["--output-dir", str(broken), "--merge-only"], (f"{shard}:2", "not valid JSON")),
        "binary metadata": (
            [*source, "--metadata", str(binary)],
            (str(binary), "is not UTF-8 text", "byte 0x80 at line 2", "save it as UTF-8"),
        ),
        "UTF-16 metadata": ([*source, "--metadata", str(wide)], (str(wide), "is UTF-16 text", "iconv -f UTF-16")),
        "broken metadata line": ([*source, "--metadata", str(torn)], (f"{torn}:2", "not valid JSON", "fix or remove")),
        "UTF-16 prompts": ([*source, "--prompts", str(wide_prompts)], (str(wide_prompts), "is UTF-16 text")),
    }


BUILDER_ERROR_CASES = [
    "batch size 0",
    "batch size -1",
    "no shards",
    "merge of nothing",
    "missing metadata",
    "output dir is a file",
    "bad shard line at merge",
    "binary metadata",
    "UTF-16 metadata",
    "broken metadata line",
    "UTF-16 prompts",
]


@pytest.mark.parametrize("case", BUILDER_ERROR_CASES)
def test_user_errors_are_one_line_naming_flag_file_or_line(case, clip_dir, tmp_path, capsys):
    argv, needles = builder_error_cases(clip_dir, tmp_path)[case]
    code, last = cli_error(argv, capsys)
    assert code == 2 and last.startswith("build_dataset.py: error: "), (code, last)
    assert all(needle in last for needle in needles), last


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--merge-only"):
        build_main(["--output-dir", str(tmp_path / "empty"), "--merge-only", "--debug"])


def test_clip_over_the_processors_limit_is_skipped_and_counted(clip_dir, tmp_path):
    """Training refuses clips over DestaProcessor's max_audio_seconds (600 s): they never become records."""
    write_clip(clip_dir / "long.wav", 601.0)
    summary = echo_build(clip_dir, tmp_path / "out")
    assert summary.written == 3 and dict(summary.skipped) == {"clip over max_audio_seconds": 1}
    assert [row["id"] for row in summary.skipped_rows] == ["long.wav"]
    assert "600" in summary.skipped_rows[0]["detail"]


def test_resume_after_the_metadata_file_changed_is_refused(clip_dir, tmp_path):
    from desta_audio.data.store import check_build_settings

    metadata = write_jsonl(tmp_path / "meta.jsonl", [{"file": "c0.wav", "text": "a"}])
    out = tmp_path / "out"
    args = parse_args(["--metadata", str(metadata), "--model", "m", "--output-dir", str(out)])
    columns = SourceColumns(audio="file", transcript="text")
    check_build_settings(out, args.settings(columns))
    check_build_settings(out, args.settings(columns))  # unchanged: resumes
    write_jsonl(metadata, [{"file": "c0.wav", "text": "b"}])
    with pytest.raises(ValueError, match=r"built with other settings .*'metadata_sha256'.*--force"):
        check_build_settings(out, args.settings(columns))


def test_folder_built_before_the_metadata_fingerprint_still_resumes(tmp_path, caplog):
    from desta_audio.data.store import check_build_settings

    metadata = write_jsonl(tmp_path / "meta.jsonl", [{"file": "c0.wav"}])
    out = tmp_path / "out"
    args = parse_args(["--metadata", str(metadata), "--model", "m", "--output-dir", str(out)])
    settings = args.settings(SourceColumns())
    del settings["metadata_sha256"]
    check_build_settings(out, settings)
    with caplog.at_level(logging.WARNING):
        check_build_settings(out, args.settings(SourceColumns()))
    assert any("metadata" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- concurrent builds, changed settings, torn files


@pytest.fixture(scope="module")
def listed_tones(tmp_path_factory) -> Path:
    """Four sox tones, listed in meta.jsonl (column `file`)."""
    if not tiny_assets.tools_available():
        pytest.skip("sox is required")
    root = tmp_path_factory.mktemp("listed_tones")
    for i in range(4):
        tiny_assets.sox_synth(root / f"tone_{i}.wav", 1.0, freq=300 + 50 * i)
    (root / "meta.jsonl").write_text("".join(json.dumps({"file": f"tone_{i}.wav"}) + "\n" for i in range(4)))
    return root


def echo_build_listed(clips: Path, out: Path, **options):
    """`echo_build` over the clips that clips/meta.jsonl lists."""
    source = folder_source(clips, clips / "meta.jsonl", "file", "toy")
    options = BuildOptions(output_dir=out, instructions=load_instructions(), progress=False, **options)
    return run_build(source, SourceColumns(audio="file"), EchoGenerator(), options)


def hold_lock(path: Path, mode: str) -> subprocess.Popen:
    """Another process holding a `flock` (LOCK_SH or LOCK_EX) on `path` until killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    script = (
        "import fcntl, sys, time\nh = open(sys.argv[1], 'a+')\n"
        f"fcntl.flock(h, fcntl.{mode})\nprint('locked', flush=True)\ntime.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_build_refuses_to_resume_with_other_settings(listed_tones, tmp_path):
    out = tmp_path / "out"
    assert echo_build_listed(listed_tones, out, settings={"seed": 0, "model": "a"}).written == 4
    with pytest.raises(ValueError, match=r"built with other settings .*'seed': \{'saved': 0, 'now': 1\}"):
        echo_build_listed(listed_tones, out, seed=1, settings={"seed": 1, "model": "a"})
    forced = echo_build_listed(listed_tones, out, seed=1, settings={"seed": 1, "model": "a"}, force=True)
    assert forced.already_done == 4


def test_second_process_on_the_same_shard_fails_clearly(listed_tones, tmp_path):
    from desta_audio.data import BuildLockedError
    from desta_audio.data.store import ShardLock

    out = tmp_path / "out"
    holder = hold_lock(ShardLock(out, 0, 1).path, "LOCK_EX")
    try:
        with pytest.raises(BuildLockedError, match=r"another process is building shard 0/1 into"):
            echo_build_listed(listed_tones, out)
        assert echo_build_listed(listed_tones, out, shard_index=1, num_shards=2).written == 2  # another shard is free
    finally:
        holder.kill()
        holder.wait()
    assert echo_build_listed(listed_tones, out).written == 2  # the lock died with its process


def test_merge_keeps_the_old_dataset_until_the_new_one_is_saved(listed_tones, tmp_path, monkeypatch):
    import datasets

    out = tmp_path / "out"
    echo_build_listed(listed_tones, out)
    assert len(merge_records(out)) == 4

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    with pytest.raises(OSError, match="No space left"):
        merge_records(out)
    monkeypatch.undo()
    assert len(datasets.load_from_disk(str(out / "dataset"))) == 4


def test_corrupt_middle_line_names_file_and_line(listed_tones, tmp_path):
    out = tmp_path / "out"
    echo_build_listed(listed_tones, out)
    shard = shard_file(out, 0, 1)
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text(lines[0] + "{garbage\n" + "".join(lines[1:]))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"audio": "c0.wav"}\n' + bytes(range(128, 256)))
    wide = tmp_path / "wide.csv"
    wide.write_text("audio\nc0.wav\n", encoding="utf-16")
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"audio": "c0.wav"}\n{"audio": "c1\x01.wav"}\n{"audio": "c2.wav"}\n')
    with pytest.raises(ValueError, match=rf"{shard}:2 is not valid JSON"):
        echo_build_listed(listed_tones, out)


def test_two_shard_layouts_cannot_build_one_folder_at_once(listed_tones, tmp_path):
    """`--num-shards 1` running while `--num-shards 2 --shard-index 0` starts: both would generate the same rows."""
    from desta_audio.data import BuildLockedError
    from desta_audio.data.store import records_dir

    out = tmp_path / "out"
    holder = hold_lock(records_dir(out) / "layout-of-00001.lock", "LOCK_SH")  # a one-shard build is running
    try:
        with pytest.raises(BuildLockedError, match=r"with another shard layout \(layout-of-00001\).*--num-shards"):
            echo_build_listed(listed_tones, out, shard_index=0, num_shards=2)
    finally:
        holder.kill()
        holder.wait()
    same_layout = hold_lock(records_dir(out) / "layout-of-00002.lock", "LOCK_SH")  # shard 0/2 is running
    try:
        # Its sibling shard runs beside it.
        assert echo_build_listed(listed_tones, out, shard_index=1, num_shards=2).written == 2
    finally:
        same_layout.kill()
        same_layout.wait()
