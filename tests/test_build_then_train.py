"""The README flow end to end: build_dataset.py on each kind of source, then train_sft.py on its output with no
path flags, after the source audio has moved away; and the authors' wrapped `<start_audio><|AUDIO|><end_audio>`
records train exactly like bare `<|AUDIO|>` ones."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from desta_audio import testing as tiny_assets
from desta_audio.data import build_main

# Slow (real Whisper, subprocesses, servers or a browser): left out of the quick loop `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}
CLIPS = {"hello.wav": ("hello world", "speech"), "door.wav": ("please open the door", "speech")}
TONES = {"beep.wav": 440.0, "hum.wav": 120.0}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required")
    root = tmp_path_factory.mktemp("clips")
    for name, (text, _) in CLIPS.items():
        tiny_assets.speak(root / name, text)
    for name, freq in TONES.items():
        tiny_assets.sox_synth(root / name, 1.5, freq=freq)
    return root


def folder_with_csv(clips: Path, work: Path) -> list[str]:
    folder = work / "corpus"
    folder.mkdir()
    with (folder / "meta.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "text", "category"])
        for name in [*CLIPS, *TONES]:
            (folder / name).write_bytes((clips / name).read_bytes())
            writer.writerow([name, CLIPS.get(name, ("", ""))[0], CLIPS.get(name, ("", "tone"))[1]])
    return ["--audio-dir", str(folder), "--metadata", str(folder / "meta.csv"), "--audio-column", "file",
            "--transcript-column", "text", "--attribute-columns", "category"]  # fmt: skip


def dataset_with_absolute_paths(clips: Path, work: Path) -> list[str]:
    """The issue's case: an Audio column of absolute paths in different folders, saved with save_to_disk."""
    import datasets

    paths = []
    for i, name in enumerate([*CLIPS, *TONES]):
        (work / f"disk{i}").mkdir()
        paths.append(str(work / f"disk{i}" / name))
        Path(paths[-1]).write_bytes((clips / name).read_bytes())
    dataset = datasets.Dataset.from_dict(
        {"audio": paths, "category": [CLIPS.get(n, ("", "tone"))[1] for n in [*CLIPS, *TONES]]},
        features=datasets.Features({"audio": datasets.Audio(), "category": datasets.Value("string")}),
    )
    dataset.save_to_disk(str(work / "saved"))
    return ["--load-from-disk", str(work / "saved"), "--attribute-columns", "category"]


def hub_style_folder(clips: Path, work: Path) -> list[str]:
    """A dataset loaded by name from a local folder, as from the Hub: an audiofolder (files + metadata.csv)."""
    folder = work / "hub_style"
    (folder / "train").mkdir(parents=True)
    with (folder / "train" / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "transcription", "category"])
        for name in [*CLIPS, *TONES]:
            (folder / "train" / name).write_bytes((clips / name).read_bytes())
            writer.writerow([name, CLIPS.get(name, ("", ""))[0], CLIPS.get(name, ("", "tone"))[1]])
    return ["--dataset", str(folder), "--transcript-column", "transcription", "--attribute-columns", "category"]


SOURCES = {
    "folder_csv": folder_with_csv,
    "datasets_absolute_paths": dataset_with_absolute_paths,
    "hub_style": hub_style_folder,
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_readme_flow_builds_then_trains_with_no_path_flags(kind, clips, llm_dir, whisper_dir, tmp_path):
    import datasets

    work = tmp_path / "source"
    work.mkdir()
    source_args = SOURCES[kind](clips, work)
    out = tmp_path / "built"
    argv = [*source_args, "--model", str(llm_dir), "--device", "cpu", "--max-new-tokens", "6", "--batch-size", "4",
            "--output-dir", str(out)]  # fmt: skip
    assert build_main(argv) == 0
    built = datasets.load_from_disk(str(out / "dataset"))
    assert len(built) == len(CLIPS) + len(TONES)
    assert built.features["audio"] == datasets.Audio(sampling_rate=16000)
    assert all(m[1]["content"].startswith("<|AUDIO|>\n\n") for m in built["messages"])

    work.rename(tmp_path / "moved")  # the source audio is gone: the dataset must carry its own
    for stored in (out / "audio").glob("*.flac"):
        stored.unlink()
    run = tmp_path / "run"
    command = [
        sys.executable, str(REPO_ROOT / "train_sft.py"), "--use_cpu", "true",
        "--llm", str(llm_dir), "--whisper", str(whisper_dir),
        "--num_audio_queries", "4", "--qformer_num_hidden_layers", "1", "--qformer_intermediate_size", "64",
        "--dataset_name", str(out), "--output_dir", str(run), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_steps", "2", "--logging_steps", "1",
        "--bf16", "false", "--activation_checkpointing", "false", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert all(entry["loss"] > 0 for entry in state["log_history"] if "loss" in entry)


# ----------------------------------------------------------------------------- the authors' record format


def reference_record(content: str) -> dict:
    return {
        "id": "r",
        "messages": [
            {"role": "system", "content": "Focus on the audio clips and instructions."},
            {"role": "user", "content": content, "audios": [{"audio": "hello.wav", "text": "hello world"}]},
        ],
        "response": "Someone says hello world.",
    }


@pytest.mark.parametrize(
    "wrapped",
    [
        "Describe the audio file. <start_audio><|AUDIO|><end_audio>",  # the authors' docs/train.md example
        "<start_audio><|AUDIO|><end_audio>\n\nDescribe the audio file.",
    ],
)
def test_wrapped_locator_trains_like_a_bare_one(wrapped, tiny_parts, audio_dir):
    from desta_audio.training.collator import DestaSFTCollator

    _, processor = tiny_parts
    collator = DestaSFTCollator(processor, audio_root=audio_dir)
    bare = wrapped.replace("<start_audio><|AUDIO|><end_audio>", "<|AUDIO|>")
    as_wrapped = collator.encode(reference_record(wrapped))
    as_bare = collator.encode(reference_record(bare))
    assert as_wrapped.input_ids == as_bare.input_ids
    assert as_wrapped.labels == as_bare.labels
    text = processor.tokenizer.decode(as_wrapped.input_ids)
    assert text.count("<start_audio>") == 1 and text.count("<end_audio>") == 1
    assert f"<start_audio>{processor.audio_token * 8}hello world<end_audio>" in text
