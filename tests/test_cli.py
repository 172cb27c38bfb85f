"""The `desta-audio` command line (`desta_audio/cli.py`): chat's output and flags, the subcommands' one-line errors
and exit codes, `--debug`, the demo command without Gradio, and `build` being build_dataset.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from transformers import pipeline

from desta_audio import testing as tiny_assets
from desta_audio.cli import DEFAULT_MODEL_ID, build_parser, main
from desta_audio.demo.ui import NEEDS_GRADIO

SPOKEN = "please open the door"


def run_cli(*args) -> subprocess.CompletedProcess:
    """`python -m desta_audio.cli ARGS` in a process of its own, as a shell user runs it."""
    return subprocess.run([sys.executable, "-m", "desta_audio.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def spoken_clip(tmp_path):
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required")
    return tiny_assets.speak(tmp_path / "door.wav", SPOKEN)


# ----------------------------------------------------------------------------- chat
# The two subprocess tests are part of the short suite run on the oldest supported transformers too
# (`pytest -m compat`), and slow (the real Whisper, a process of their own).
@pytest.mark.compat
@pytest.mark.slow
def test_cli_answers_streams_and_reports_transcripts(real_whisper_model_dir, spoken_clip):
    pipe = pipeline("audio-text-to-text", model=str(real_whisper_model_dir), trust_remote_code=True)
    expected = pipe(str(spoken_clip), prompt="What is said?", max_new_tokens=4)
    chat = ["chat", str(spoken_clip), "-p", "What is said?", "--model", str(real_whisper_model_dir)]
    plain = run_cli(*chat, "--max-new-tokens", "4", "-v")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == expected["generated_text"] + "\n"
    assert f"[transcript] {spoken_clip}: {expected['transcripts'][0]}" in plain.stderr
    streamed = run_cli(*chat, "--max-new-tokens", "4", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == expected["generated_text"]


@pytest.mark.compat
@pytest.mark.slow
def test_cli_missing_file_exits_nonzero_with_message(tmp_path):
    result = run_cli("chat", str(tmp_path / "missing.wav"), "-p", "hi", "--model", str(tmp_path))
    assert result.returncode == 2
    assert "desta-audio: error: audio file not found" in result.stderr and "missing.wav" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.compat
def test_cli_defaults_to_the_authors_release():
    assert DEFAULT_MODEL_ID == "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B"


def test_chat_passes_device_and_dtype_by_name(saved_model_dir, audio_dir, capsys):
    """--device/--dtype reach the pipeline as device and dtype (they were once shifted into the wrong slots)."""
    args = ["chat", str(audio_dir / "tone.wav"), "--model", str(saved_model_dir), "--transcript", ""]
    code = main([*args, "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.endswith("\n") and captured.out.count("\n") == 1  # one answer line


# ----------------------------------------------------------------------------- one-line errors
def cli_error(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.startswith("desta-audio: error: ") and "\n" not in err, (code, err)
    assert all(needle in err for needle in needles), err


def test_cli_errors_are_one_line(audio_dir, llm_dir, tmp_path, capsys):
    clip = str(audio_dir / "tone.wav")
    cases = [
        (["chat", clip, "--model", str(tmp_path / "missing_dir")], "no such model folder"),
        (["chat", clip, "--model", "missing_dir"], "--model missing_dir: no such model folder"),
        (["chat", clip, "--model", str(llm_dir)], "this is a 'llama' model, not a DeSTA checkpoint"),
        (["chat", str(tmp_path / "nope.wav")], "audio file not found"),
    ]
    if not torch.cuda.is_available():
        cases.append((["chat", clip, "--model", "org/model", "--device", "cuda"], "sees no CUDA GPU"))
    for args, message in cases:
        code, err = cli_error(args, capsys)
        assert code != 0 and err.startswith("desta-audio: error: ") and message in err, (args, err)
        assert "\n" not in err and "Traceback" not in err


def test_missing_local_paths_are_not_taken_for_hub_ids(audio_dir, tmp_path, monkeypatch, capsys):
    """`./missing_dir` matches the Hub id pattern (`.` / `missing_dir`); it once reached the Hub's id check."""
    monkeypatch.chdir(tmp_path)
    clip = str(audio_dir / "tone.wav")
    code, err = cli_error(["chat", clip, "--model", "./missing_dir"], capsys)
    assert_one_line(code, err, "--model ./missing_dir", f"no such folder: {tmp_path / 'missing_dir'}")
    code, err = cli_error(["convert", "--checkpoint", "./missing", "--output", str(tmp_path / "out")], capsys)
    assert_one_line(code, err, "--checkpoint ./missing", f"no such folder: {tmp_path / 'missing'}")
    code, err = cli_error(["eval", "--data-file", "x.json", "--model", "~/no_such_desta_model_here"], capsys)
    assert_one_line(code, err, "no such folder:")


def test_audio_policy_must_be_a_json_object(audio_dir, saved_model_dir, capsys):
    clip = str(audio_dir / "tone.wav")
    for policy in ("[1, 2]", "{not json"):
        code, err = cli_error(["chat", clip, "--model", str(saved_model_dir), "--audio-policy", policy], capsys)
        assert_one_line(code, err, "--audio-policy", "JSON object")


def test_demo_port_must_be_a_port_number(capsys):
    for port in ("99999", "0", "-1"):
        code, err = cli_error(["demo", "--model", "some/model", "--port", port], capsys)
        assert_one_line(code, err, f"--port {port}", "1-65535")


def test_rescore_names_the_file_and_line_of_a_prediction_without_id(tmp_path, capsys):
    good = {"id": "q1", "format": "mcq", "choices": ["a", "b"], "answer": "a", "prediction": "a"}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({k: v for k, v in good.items() if k != "id"}) + "\n")
    code, err = cli_error(["eval", "--rescore", str(path), "--output-dir", str(tmp_path / "out")], capsys)
    assert_one_line(code, err, f"{path}:3", "'id'")


def test_rescore_names_the_file_and_line_of_a_prediction_that_is_not_utf8(tmp_path, capsys):
    good = {"id": "q1", "format": "mcq", "choices": ["a", "b"], "answer": "a", "prediction": "a"}
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(json.dumps(good).encode() + b'\n{"id": "caf\xe9"}\n' + json.dumps(good).encode() + b"\n")
    code, err = cli_error(["eval", "--rescore", str(path), "--output-dir", str(tmp_path / "out")], capsys)
    assert_one_line(code, err, f"{path} is not UTF-8 text: byte 0xe9 at line 2")


def test_debug_and_verbose_show_the_traceback(audio_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clip = str(audio_dir / "tone.wav")
    for flag in ("--debug", "-v"):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            main(["chat", clip, "--model", "./missing_dir", flag])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        main(["convert", "--checkpoint", "./missing", "--output", str(tmp_path / "out"), "--debug"])


# ----------------------------------------------------------------------------- demo and build
def test_demo_command_without_gradio_says_what_to_install(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gradio" else real_find_spec(name))
    args = build_parser().parse_args(["demo", "--model", "some/model"])
    assert args.handler(args) == 2
    assert capsys.readouterr().err == f"desta-audio: error: {NEEDS_GRADIO}\n"


@pytest.mark.slow
def test_build_subcommand_is_build_dataset_py(llm_dir, audio_dir, tmp_path, capsys):
    """`desta-audio build` and `python build_dataset.py` are one library with one set of arguments: the same flags
    write the same records, and the subcommand's --help lists the script's flags."""
    from pathlib import Path

    (tmp_path / "meta.jsonl").write_text("".join(json.dumps({"file": n}) + "\n" for n in ("tone.wav", "noise.wav")))
    common = ["--audio-dir", str(audio_dir), "--metadata", str(tmp_path / "meta.jsonl"), "--audio-column", "file"]
    common += ["--model", str(llm_dir), "--max-new-tokens", "3", "--device", "cpu"]
    assert main(["build", *common, "--output-dir", str(tmp_path / "subcommand")]) == 0
    script = subprocess.run(
        [sys.executable, "build_dataset.py", *common, "--output-dir", str(tmp_path / "script")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert script.returncode == 0, script.stderr[-2000:]

    def records(folder):
        rows = [json.loads(line) for path in sorted((folder / "records").glob("*.jsonl")) for line in path.open()]
        return sorted((r["id"], r["seed_description"], r["prompt"], r["response"]) for r in rows)

    assert records(tmp_path / "subcommand") == records(tmp_path / "script") and len(records(tmp_path / "script")) == 2
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    shown = capsys.readouterr().out
    assert all(flag in shown for flag in ("--audio-dir", "--asr-model", "--request-timeout", "--num-shards", "--debug"))
