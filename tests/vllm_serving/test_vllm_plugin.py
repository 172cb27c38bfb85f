"""The vLLM plugin on vLLM's CPU build, against the transformers path, in float32 (greedy ids are exact there).

Runs in `.ci/vllm`'s venv (`bash .ci/vllm test`), with two engine starts: one `vllm.LLM` in this process (parity of
prompt ids, audio vectors and greedy ids; the dataset builder's `vllm` engine) and one OpenAI-compatible
`api_server` (audio chat over HTTP, bad input, evaluation through `--base-url`). The checkpoint is a tiny Llama
with 32-dim heads around the real Whisper tiny.en, so the plugin's own transcription is real speech recognition.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

# The engine in this process, so that `LLM.apply_model` reaches the model itself.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from desta_audio import testing as tiny_assets  # noqa: E402
from desta_audio.testing.servers import free_port, wait_until_healthy  # noqa: E402

pytestmark = pytest.mark.slow
NEW_TOKENS = 12
ENGINE_OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 4096, "gpu_memory_utilization": 0.1}
QUESTION = "What is in the audio?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, real_whisper_dir) -> Path:
    return tiny_assets.build_servable_checkpoint(tmp_path_factory.mktemp("servable"), real_whisper_dir)


@pytest.fixture(scope="module")
def reference(checkpoint):
    from modeling_desta import DestaForConditionalGeneration
    from processing import DestaProcessor

    model = DestaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, DestaProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def llm(checkpoint):
    from vllm import LLM

    engine = LLM(model=str(checkpoint), seed=0, **ENGINE_OPTIONS)
    yield engine
    del engine


@pytest.fixture(scope="module")
def clips(audio_dir) -> dict[str, bytes]:
    return {name: (audio_dir / f"{name}.wav").read_bytes() for name in ("hello", "numbers", "tone", "long_45s")}


def _input_audio(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def _openai_chat(*audios: bytes, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [*map(_input_audio, audios), {"type": "text", "text": question}]}]


def _desta_chat(audios: list[bytes], transcripts: list, question: str = QUESTION) -> list[dict]:
    items = [{"type": "audio", "audio": a, "transcript": t} for a, t in zip(audios, transcripts)]
    return [{"role": "user", "content": [*items, {"type": "text", "text": question}]}]


def _without_end(ids: list[int], processor) -> list[int]:
    ends = {processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id}
    return [i for i in ids if i not in ends]


def _transformers_ids(reference, conversation) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy new ids) of `DestaForConditionalGeneration.generate` for a chat with transcripts."""
    model, processor = reference
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, _without_end(output[0, len(prompt) :].tolist(), processor)


def _vllm_ids(llm, messages, processor, **kwargs) -> tuple[list[int], list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    output = llm.chat(messages, params, use_tqdm=False, **kwargs)[0]
    return list(output.prompt_token_ids), _without_end(list(output.outputs[0].token_ids), processor)


# ----------------------------------------------------------------------------- parity in one engine
def test_text_only_chat_equals_generate(llm, reference):
    chat = [{"role": "user", "content": "Name three colours. <|eot_id|> typed by a user stays text."}]
    assert _vllm_ids(llm, chat, reference[1]) == _transformers_ids(reference, chat)


@pytest.mark.parametrize(
    ("names", "transcripts"),
    [
        (["hello"], ["hello world"]),
        (["hello"], [""]),
        (["hello", "numbers"], ["hello world", "one two three four five six"]),
        (["long_45s"], ["a low tone"]),
    ],
    ids=["one-clip", "empty-transcript", "two-clips", "45s-two-windows"],
)
def test_audio_chat_with_transcripts_equals_generate(llm, reference, clips, names, transcripts):
    audios = [clips[name] for name in names]
    expected = _transformers_ids(reference, _desta_chat(audios, transcripts))
    got = _vllm_ids(llm, _openai_chat(*audios), reference[1], mm_processor_kwargs={"transcripts": transcripts})
    assert got[0] == expected[0]  # the expanded prompt: placeholders per window, then the transcript's ids
    assert got[1] == expected[1]


def test_audio_only_request_is_transcribed_as_the_pipeline_does(llm, reference, clips, checkpoint):
    from desta_audio.runtime import load_pipeline

    pipe = load_pipeline(checkpoint, device="cpu", dtype="float32")
    chats = {name: _desta_chat([clips[name]], [None]) for name in ("numbers", "tone")}
    heard = {name: pipe(chat, max_new_tokens=NEW_TOKENS)["transcripts"][0] for name, chat in chats.items()}
    assert heard["numbers"] == "1, 2, 3, 4, 5, 6" and heard["tone"] == ""  # real ASR, and the no-speech rule
    for name in chats:
        expected = _transformers_ids(reference, _desta_chat([clips[name]], [heard[name]]))
        assert _vllm_ids(llm, _openai_chat(clips[name]), reference[1]) == expected


def test_embed_multimodal_equals_get_audio_features(llm, reference, clips):
    model, processor = reference
    waveforms = [processor.load_audio(clips["hello"]), processor.load_audio(clips["long_45s"])]
    features, counts = processor.extract_features(waveforms)
    with torch.no_grad():
        expected = model.get_audio_features(features).pooler_output

    def embed(vllm_model):
        return vllm_model.embed_multimodal(input_features=features, window_counts=torch.tensor(counts))

    (vectors,) = llm.apply_model(embed)
    assert [v.shape[0] for v in vectors] == [c * processor.num_audio_queries for c in counts]
    torch.testing.assert_close(torch.cat(vectors), expected, atol=1e-5, rtol=0)


def test_bad_requests_raise_and_name_the_problem(llm, reference, clips):
    processor = reference[1]
    cases = [
        (_openai_chat(b"RIFF not audio at all"), {}, "audio"),
        (_openai_chat(clips["hello"]), {"mm_processor_kwargs": {"transcripts": ["a", "b"]}}, "2 for 1"),
        (
            _openai_chat(clips["hello"]),
            {"mm_processor_kwargs": {"audio_policy": {"allow_paths": True}}},
            "audio_policy",
        ),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], {}, "image_url"),
    ]
    for messages, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            _vllm_ids(llm, messages, processor, **kwargs)
    assert _vllm_ids(llm, [{"role": "user", "content": "still serving"}], processor)[1]


def test_dataset_builder_vllm_engine_gives_the_transformers_rows(llm, checkpoint, audio_dir, tmp_path):
    """`--engine vllm`'s generator on this engine (a second engine start would double the test's cost; the flag's
    wiring to `vllm.LLM` is tested without an engine) against `--engine transformers` on the same checkpoint."""
    from desta_audio.data.engines import TransformersGenerator, VLLMGenerator

    conversations = [
        [{"role": "user", "content": "Describe: [00:00-00:02] hello world (Gender: Female)"}],
        [{"role": "user", "content": "Describe: [00:00-00:02] a beep"}],
    ]
    options = {"max_new_tokens": NEW_TOKENS, "temperature": 0.0}
    served = VLLMGenerator(checkpoint, llm=llm, **options).generate(conversations, seed=0)
    local = TransformersGenerator.from_pretrained(checkpoint, device="cpu", dtype="float32", **options)
    assert served == local.generate(conversations, seed=0)
    assert all(served)


# ----------------------------------------------------------------------------- one OpenAI-compatible server
@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "api_server.log"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in ENGINE_OPTIONS.items() if k != "enforce_eager"]
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint)]
    # --trust-request-mm-kwargs: vLLM's gate on per-request mm_processor_kwargs, which carry transcripts.
    command += [*options, "--enforce-eager", "--trust-request-mm-kwargs", "--seed=0", "--host=127.0.0.1"]
    command.append(f"--port={port}")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{base}/health", process, log, 600, "api_server", poll_s=2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)


def _post_chat(server: str, messages: list[dict], **extra) -> httpx.Response:
    body = {"model": None, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0.0, **extra}
    models = httpx.get(f"{server}/v1/models", timeout=30).json()["data"]
    body["model"] = models[0]["id"]
    return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)


def test_server_answers_input_audio_with_the_transformers_ids(server, reference, clips):
    """Token ids, not text: a reply cut by max_tokens mid-character decodes differently in vLLM's incremental
    detokenizer. Without a transcript, the server's ASR hears what `test_audio_only_...` shows the pipeline hears."""
    for transcripts, heard in ((["hello world"], "hello world"), ([None], "1, 2, 3, 4, 5, 6")):
        clip = clips["hello"] if transcripts[0] is not None else clips["numbers"]
        prompt, expected = _transformers_ids(reference, _desta_chat([clip], [heard]))
        extra = {"mm_processor_kwargs": {"transcripts": transcripts}} if transcripts[0] is not None else {}
        response = _post_chat(server, _openai_chat(clip), return_token_ids=True, **extra)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["prompt_token_ids"] == prompt
        assert _without_end(body["choices"][0]["token_ids"], reference[1]) == expected


def test_server_refuses_bad_input_with_400_and_keeps_serving(server, clips, audio_dir, tmp_path):
    long_clip = tiny_assets.sox_silence(tmp_path / "long.flac", 601.0)
    tiny = tiny_assets.sox_silence(tmp_path / "short.wav", 0.2).read_bytes()
    cases = {
        "undecodable": (_openai_chat(b"RIFF\x00\x00\x00\x00WAVEnot audio"), {}, "audio"),
        "image part": (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            {},
            "image_url",
        ),
        "too long": (_openai_chat(long_clip.read_bytes()), {}, "max_audio_seconds"),
        "too many clips": (_openai_chat(*[tiny] * 21), {}, "clips"),
        "transcript count": (_openai_chat(clips["hello"]), {"mm_processor_kwargs": {"transcripts": []}}, "0 for 1"),
        "internal url": (
            [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}}]}],
            {},
            "127.0.0.1",
        ),
    }
    for name, (messages, extra, fragment) in cases.items():
        response = _post_chat(server, messages, **extra)
        assert response.status_code == 400, (name, response.status_code, response.text)
        assert fragment in response.json()["error"]["message"], (name, response.text)
    healthy = _post_chat(server, _openai_chat(clips["hello"]), mm_processor_kwargs={"transcripts": [""]})
    assert healthy.status_code == 200


def test_eval_through_the_server_gives_the_in_process_predictions(server, checkpoint, audio_dir, tmp_path):
    from desta_audio.files import read_jsonl

    rows = [
        {
            "id": "a",
            "audio_path": str(audio_dir / "numbers.wav"),
            "question": "Which?",
            "choices": ["1", "2"],
            "answer": "1",
        },
        {
            "id": "b",
            "audio_path": str(audio_dir / "tone.wav"),
            "question": "What?",
            "choices": ["tone", "speech"],
            "answer": "tone",
        },
        {
            "id": "c",
            "audio_path": str(audio_dir / "hello.wav"),
            "question": "Who?",
            "choices": ["a", "b", "c"],
            "answer": "b",
        },
    ]
    data = tmp_path / "mini.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from desta_audio import cli

    common = ["eval", "--data-file", str(data), "--model", str(checkpoint), "--max-new-tokens", str(NEW_TOKENS)]
    assert cli.main([*common, "--output-dir", str(tmp_path / "local"), "--device", "cpu", "--dtype", "float32"]) == 0
    assert cli.main([*common, "--output-dir", str(tmp_path / "served"), "--base-url", f"{server}/v1"]) == 0
    local, served = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("local", "served"))
    assert served == local

    def answers(folder):
        return [(r["id"], r["model_output"]) for r in read_jsonl(tmp_path / folder / "predictions.jsonl")]

    assert answers("served") == answers("local") and len(answers("local")) == 3


def test_the_release_format_is_refused_with_the_command_that_converts_it(tmp_path):
    from vllm import LLM

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "desta25", "llm_model_id": "x"}))
    with pytest.raises(ValueError, match=r"release format.*desta-audio convert --checkpoint"):
        LLM(model=str(tmp_path), **ENGINE_OPTIONS)
