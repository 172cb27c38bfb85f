"""`desta-audio` front-end plumbing that the pipeline tests do not reach."""

from __future__ import annotations

from desta_audio.cli import main


def test_chat_passes_device_and_dtype_by_name(saved_model_dir, audio_dir, capsys):
    """--device/--dtype reach the pipeline as device and dtype (they were once shifted into the wrong slots)."""
    args = ["chat", str(audio_dir / "tone.wav"), "--model", str(saved_model_dir), "--transcript", ""]
    code = main([*args, "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.endswith("\n") and captured.out.count("\n") == 1  # one answer line
