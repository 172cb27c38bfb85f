"""`desta-audio` front-end plumbing that the pipeline tests do not reach."""

from __future__ import annotations

import json

import pytest

from desta_audio.cli import main


def test_chat_passes_device_and_dtype_by_name(saved_model_dir, audio_dir, capsys):
    """--device/--dtype reach the pipeline as device and dtype (they were once shifted into the wrong slots)."""
    args = ["chat", str(audio_dir / "tone.wav"), "--model", str(saved_model_dir), "--transcript", ""]
    code = main([*args, "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.endswith("\n") and captured.out.count("\n") == 1  # one answer line


def cli_error(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.startswith("desta-audio: error: ") and "\n" not in err, (code, err)
    assert all(needle in err for needle in needles), err


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


def test_debug_and_verbose_show_the_traceback(audio_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clip = str(audio_dir / "tone.wav")
    for flag in ("--debug", "-v"):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            main(["chat", clip, "--model", "./missing_dir", flag])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        main(["convert", "--checkpoint", "./missing", "--output", str(tmp_path / "out"), "--debug"])


@pytest.mark.slow
def test_build_subcommand_is_build_dataset_py(llm_dir, audio_dir, tmp_path, capsys):
    """`desta-audio build` and `python build_dataset.py` are one library with one set of arguments: the same flags
    write the same records, and the subcommand's --help lists the script's flags."""
    import subprocess
    import sys
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
