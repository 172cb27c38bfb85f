"""The web demo's handlers, without a browser: streaming equals the pipeline, transcripts, multi-turn chats,
each bad input's message, the model loader (progress, CPU notice, failure, the release format)."""

import json

import pytest
import torch
from test_hub import reference_state_dict, write_reference_checkpoint

from desta_audio import demo
from desta_audio import testing as tiny_assets
from desta_audio.demo import Chat, DemoInputError, ModelLoader, add_user_turn, answer, generation_kwargs, load_clip
from processing import DEFAULT_SYSTEM_PROMPT

SPOKEN = "please open the door"
MAX_BYTES = 10 * 2**20
GREEDY = generation_kwargs(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def loader(real_whisper_model_dir):
    loader = ModelLoader(str(real_whisper_model_dir), device="cpu").start()
    assert loader.wait(timeout=300)
    assert loader.ready, loader.status()
    return loader


@pytest.fixture(scope="module")
def pipe(loader):
    return loader.pipe


@pytest.fixture(scope="module")
def clips(tmp_path_factory, audio_dir):
    path = tmp_path_factory.mktemp("demo_audio")
    tiny_assets.speak(path / "door.wav", SPOKEN)
    tiny_assets.sox_synth(path / "tone.wav", 1.0, freq=440)
    tiny_assets.sox_synth(path / "five_seconds.wav", 5.0, freq=220)
    return {"door": path / "door.wav", "tone": path / "tone.wav", "five": path / "five_seconds.wav", "audio": audio_dir}


def run_answer(pipe, chat, system_prompt=None, kwargs=GREEDY):
    steps = list(answer(pipe, chat, system_prompt, kwargs))
    return steps, steps[-1][0], steps[-1][1]


def test_streamed_answer_equals_the_pipeline_answer(pipe, clips):
    chat = add_user_turn(Chat(), "What is said?", [str(clips["door"])], pipe.processor, MAX_BYTES)
    steps, done, transcripts = run_answer(pipe, chat)

    conversation = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [{"type": "audio", "path": str(clips["door"])}, {"type": "text", "text": "What is said?"}],
        },
    ]
    expected = pipe(conversation, max_new_tokens=12, do_sample=False)
    partials = [step[0].shown[-1]["content"] for step in steps[:-1]]
    assert len(set(partials)) >= 2  # the answer arrived in pieces, each one a longer prefix
    assert all(later.startswith(earlier) for earlier, later in zip(partials, partials[1:]))
    assert partials[-1].strip() == expected["generated_text"]
    assert done.shown[-1] == {"role": "assistant", "content": expected["generated_text"]}
    assert transcripts == [("door.wav", expected["transcripts"][0])]
    assert SPOKEN in transcripts[0][1].lower()


def test_follow_up_reuses_the_clip_and_its_transcript(pipe, clips):
    first = add_user_turn(Chat(), "What is said?", [str(clips["door"]), str(clips["tone"])], pipe.processor, MAX_BYTES)
    _, first_done, first_transcripts = run_answer(pipe, first, system_prompt="Answer briefly.")
    assert [name for name, _ in first_transcripts] == ["door.wav", "tone.wav"]
    assert first_transcripts[1][1] == ""  # a tone: Whisper heard no speech

    follow_up = add_user_turn(first_done, "And who says it?", [], pipe.processor, MAX_BYTES)
    _, done, transcripts = run_answer(pipe, follow_up, system_prompt="Answer briefly.")
    assert transcripts == first_transcripts
    assert [turn["role"] for turn in done.shown] == ["user", "assistant", "user", "assistant"]
    assert done.shown[2]["content"] == "And who says it?"

    # the same three turns given to the pipeline directly, transcripts included, give the same answer
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(clips["door"]), "transcript": first_transcripts[0][1]},
                {"type": "audio", "path": str(clips["tone"]), "transcript": ""},
                {"type": "text", "text": "What is said?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": first_done.shown[1]["content"]}]},
        {"role": "user", "content": [{"type": "text", "text": "And who says it?"}]},
    ]
    assert done.shown[-1]["content"] == pipe(conversation, max_new_tokens=12, do_sample=False)["generated_text"]


def test_user_turn_shows_clip_names_and_question(pipe, clips):
    chat = add_user_turn(Chat(), "  What is said?  ", [str(clips["door"])], pipe.processor, MAX_BYTES)
    assert chat.shown == [{"role": "user", "content": "[door.wav]\n\nWhat is said?"}]
    assert chat.messages[0]["content"][-1] == {"type": "text", "text": "What is said?"}


def test_sampling_settings():
    assert generation_kwargs(64, 0.0) == {"max_new_tokens": 64, "do_sample": False}
    assert generation_kwargs(64, 0.7) == {"max_new_tokens": 64, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


# ----------------------------------------------------------------------------- bad input -> its message
def test_no_audio_and_empty_question(pipe, clips):
    with pytest.raises(DemoInputError) as error:
        add_user_turn(Chat(), "What is said?", [], pipe.processor, MAX_BYTES)
    assert str(error.value) == demo.NO_AUDIO
    for question in ("", "   ", None):
        with pytest.raises(DemoInputError) as error:
            add_user_turn(Chat(), question, [str(clips["door"])], pipe.processor, MAX_BYTES)
        assert str(error.value) == demo.EMPTY_QUESTION


@pytest.mark.parametrize("name", ["corrupt.wav", "empty.wav", "zero_length.wav"])
def test_unreadable_file(pipe, clips, name):
    with pytest.raises(DemoInputError) as error:
        load_clip(clips["audio"] / name, pipe.processor, MAX_BYTES)
    assert str(error.value) == f"Could not read {name} as audio. Upload a WAV, FLAC, MP3 or OGG file."


def test_missing_upload(pipe, tmp_path):
    with pytest.raises(DemoInputError, match=r"^gone.wav was not received; upload it again.$"):
        load_clip(tmp_path / "gone.wav", pipe.processor, MAX_BYTES)


def test_clip_over_max_audio_seconds_is_refused(pipe, clips, monkeypatch):
    monkeypatch.setattr(pipe.processor, "max_audio_seconds", 3.0)
    with pytest.raises(DemoInputError) as error:
        load_clip(clips["five"], pipe.processor, MAX_BYTES)
    assert str(error.value) == "five_seconds.wav is longer than 3 s, the longest clip this demo accepts."


def test_uploads_are_decoded_from_bytes_under_the_untrusted_policy(pipe, clips, monkeypatch):
    """The upload's bytes reach the decoder, never its path, under a policy that refuses paths and URLs."""
    seen = []
    decode = pipe.processor.load_audio
    monkeypatch.setattr(
        pipe.processor,
        "load_audio",
        lambda source, audio_policy=None: seen.append((source, audio_policy)) or decode(source, audio_policy),
    )
    waveform = load_clip(clips["five"], pipe.processor, MAX_BYTES)
    ((source, policy),) = seen
    assert source == clips["five"].read_bytes() and len(waveform) == 5 * 16000
    assert not policy.allow_paths and not policy.allow_urls


def test_eight_long_silent_uploads_stop_at_the_audio_budget(pipe, tmp_path, monkeypatch):
    """One message of 8 uploads of a ~30 KB FLAC holding 599 s of silence: refused at the second clip, which puts the
    chat over 600 s; the other six are never decoded, and what was decoded stays far under 1 GB."""
    import tracemalloc

    flac = tmp_path / "long_silence.flac"
    tiny_assets.sox_silence(flac, 599.0)
    assert flac.stat().st_size < 200_000
    decoded = []
    decode = pipe.processor.load_audio
    monkeypatch.setattr(
        pipe.processor,
        "load_audio",
        lambda source, audio_policy=None: decoded.append(1) or decode(source, audio_policy),
    )
    tracemalloc.start()
    try:
        with pytest.raises(DemoInputError, match=r"1198\.0 s of audio in 2 clips, over max_request_audio_seconds=600"):
            add_user_turn(Chat(), "What is this?", [flac] * 8, pipe.processor, MAX_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(decoded) == 2 and peak < 2**30
    with pytest.raises(DemoInputError, match="holds 21 audio clips, over max_request_windows=20"):
        add_user_turn(Chat(), "What is this?", [flac] * 21, pipe.processor, MAX_BYTES)
    assert len(decoded) == 2  # refused before decoding anything


def test_file_over_the_size_limit_is_refused(pipe, clips):
    with pytest.raises(DemoInputError) as error:
        load_clip(clips["five"], pipe.processor, max_bytes=2**20 // 10)
    size_mb = clips["five"].stat().st_size / 2**20
    assert str(error.value) == f"five_seconds.wav is {size_mb:.1f} MB; this demo accepts files up to 0.1 MB."


# ----------------------------------------------------------------------------- loading
def test_loader_reports_progress_then_cpu(real_whisper_model_dir):
    loader = ModelLoader(str(real_whisper_model_dir), device="cpu")
    assert loader.status().startswith(f"**Loading** `{real_whisper_model_dir}`: waiting to start")
    loader.start()
    assert loader.wait(timeout=300)
    assert (
        loader.status()
        == f"**Ready:** `{real_whisper_model_dir}` on **cpu** (float32). Running on CPU: answers come slowly."
    )


def test_loader_failure_is_a_message(tmp_path):
    missing = tmp_path / "no-model"
    missing.mkdir()
    loader = ModelLoader(str(missing), device="cpu").start()
    assert loader.wait(timeout=60)
    assert not loader.ready
    assert loader.status().startswith("**Error:** The model could not be loaded: ")
    assert "Traceback" not in loader.status()


def test_release_format_loads_as_it_is(tmp_path, llm_dir, whisper_dir):
    whisper_config = json.loads((whisper_dir / "config.json").read_text())
    llm_config = json.loads((llm_dir / "config.json").read_text())
    state = reference_state_dict(
        whisper_config["d_model"], llm_config["hidden_size"], whisper_config["encoder_attention_heads"]
    )
    release = write_reference_checkpoint(tmp_path / "release", state, llm_dir, whisper_dir)
    loader = ModelLoader(str(release), device="cpu", dtype="float32").start()
    assert loader.wait(timeout=300)
    assert loader.ready, loader.status()
    assert loader.pipe.model.config.model_type == "desta"
    expected = state["perception.connector.layer_weights"]
    assert torch.equal(loader.pipe.model.model.connector.layer_weights.detach().cpu(), expected)


def test_answers_go_through_the_queue_one_at_a_time(loader):
    """Only answering is queued, with concurrency 1; status polling and "New chat" bypass the queue."""
    app = demo.build_app(loader)
    queued = {fn.name: fn.concurrency_limit for fn in app.fns.values() if fn.queue}
    assert queued == {"respond": demo.CONCURRENCY_LIMIT} and demo.CONCURRENCY_LIMIT == 1
