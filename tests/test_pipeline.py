"""The audio-text-to-text pipeline with the real Whisper tiny.en: ASR on the shared encoder pass, silence,
long audio, batching, streaming, the any-to-any pipeline and remote-code loading; then bad calls, on the tiny parts."""

import logging
import subprocess
import threading

import pytest
import torch
from conftest import system_chat, tone_item
from isolation import run_isolated
from transformers import TextIteratorStreamer, pipeline

from desta_audio import testing as tiny_assets
from modeling_desta import DestaForConditionalGeneration
from processing import DestaAudioTextToTextPipeline, DestaProcessor, load_audio
from processing.audio_sources import AudioSourceError, AudioSourcePolicy

# Every real-Whisper test is marked `compat` and `slow`: part of the short suite run on the oldest supported
# transformers too (`pytest -m compat`), and left out of the quick loop `pytest -m "not slow"` (real Whisper,
# subprocesses). The bad calls at the end run on the tiny parts and are neither.

SPOKEN = "please open the door"


@pytest.fixture(scope="module")
def pipe(real_whisper_model_dir):
    return pipeline("audio-text-to-text", model=str(real_whisper_model_dir), trust_remote_code=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, audio_dir):
    path = tmp_path_factory.mktemp("pipeline_audio")
    tiny_assets.speak(path / "door.wav", SPOKEN)
    tiny_assets.speak(path / "morning.wav", "good morning everyone")
    return {"door": path / "door.wav", "morning": path / "morning.wav", **{p.stem: p for p in audio_dir.iterdir()}}


class Recorder:
    """Counts Whisper encoder passes (conv1 calls) and windows, Whisper decoder runs (ASR) and the audio
    placeholders given to generate."""

    def __init__(self, pipe):
        self.encoder_calls, self.encoder_windows, self.final_layer_calls, self.placeholders = 0, 0, 0, []
        self.decoder_calls = 0
        encoder = pipe.model.model.audio_tower.get_encoder()
        self.handles = [
            encoder.conv1.register_forward_hook(self._on_encoder),
            encoder.layer_norm.register_forward_hook(self._on_final_layer),
            pipe.model.model.audio_tower.get_decoder().register_forward_hook(self._on_decoder),
        ]
        self.pipe, self.original_generate = pipe, pipe.model.generate
        pipe.model.generate = self._generate

    def _on_encoder(self, module, args, output):
        self.encoder_calls += 1
        self.encoder_windows += args[0].shape[0]

    def _on_final_layer(self, *_):
        self.final_layer_calls += 1

    def _on_decoder(self, *_):
        self.decoder_calls += 1

    def _generate(self, **kwargs):
        self.placeholders.append((kwargs["input_ids"] == self.pipe.model.config.audio_token_id).sum(dim=1).tolist())
        return self.original_generate(**kwargs)

    def close(self):
        for handle in self.handles:
            handle.remove()
        self.pipe.model.generate = self.original_generate


@pytest.fixture()
def recorder(pipe):
    recorder = Recorder(pipe)
    yield recorder
    recorder.close()


@pytest.mark.compat
@pytest.mark.slow
def test_pipeline_class_comes_from_remote_code(pipe):
    assert type(pipe).__name__ == "DestaAudioTextToTextPipeline"
    assert type(pipe).__module__.startswith("transformers_modules")


@pytest.mark.compat
@pytest.mark.slow
def test_speech_is_transcribed_on_the_connector_encoder_pass(pipe, clips, recorder):
    result = pipe(str(clips["door"]), prompt="What is said?", max_new_tokens=3)
    assert SPOKEN in result["transcripts"][0].lower()
    assert isinstance(result["generated_text"], str)
    assert recorder.encoder_calls == 1 and recorder.encoder_windows == 1
    assert recorder.final_layer_calls == 1  # one full pass served both the connector and ASR
    assert recorder.decoder_calls > 0  # ASR ran (what test_user_transcript_skips_asr counts)


@pytest.mark.compat
@pytest.mark.slow
def test_tone_and_silence_get_empty_transcripts(pipe, clips):
    results = pipe(
        [str(clips["tone"]), str(clips["silence"]), str(clips["noise"])], prompt="What?", max_new_tokens=2, batch_size=3
    )
    assert [r["transcripts"] for r in results] == [[""], [""], [""]]


@pytest.mark.compat
@pytest.mark.slow
def test_user_transcript_skips_asr(pipe, clips, recorder):
    conversation = [
        {"role": "user", "content": [{"type": "audio", "path": str(clips["door"]), "transcript": "given text"}]}
    ]
    result = pipe(conversation, max_new_tokens=2)
    assert result["transcripts"] == ["given text"]
    assert recorder.decoder_calls == 0  # no ASR: Whisper's decoder never ran
    assert recorder.encoder_calls == 1


@pytest.mark.compat
@pytest.mark.slow
def test_array_input_and_45_second_clip(pipe, clips, recorder):
    array = load_audio(clips["door"])
    from_array = pipe(array, prompt="What is said?", max_new_tokens=3)
    from_dict = pipe({"array": array, "sampling_rate": 16000}, prompt="What is said?", max_new_tokens=3)
    from_path = pipe(str(clips["door"]), prompt="What is said?", max_new_tokens=3)
    assert from_array == from_dict == from_path
    long_result = pipe(str(clips["long_45s"]), prompt="Describe.", max_new_tokens=3)
    assert isinstance(long_result["generated_text"], str)
    queries = pipe.model.config.num_audio_queries
    assert recorder.placeholders[-1] == [2 * queries]  # two windows' worth of audio tokens


@pytest.mark.compat
@pytest.mark.slow
def test_transcript_covers_whole_long_clip(pipe, tmp_path):
    first, second = (
        tiny_assets.speak(tmp_path / "a.wav", SPOKEN),
        tiny_assets.speak(tmp_path / "b.wav", "good morning everyone"),
    )
    gap = tiny_assets.sox_silence(tmp_path / "gap.wav", 31.0)
    joined = tmp_path / "joined.wav"
    subprocess.run(["sox", str(first), str(gap), str(second), str(joined)], check=True)
    transcript = pipe(str(joined), prompt="What?", max_new_tokens=2)["transcripts"][0].lower()
    assert SPOKEN in transcript and "good morning" in transcript


@pytest.mark.compat
@pytest.mark.slow
def test_batched_pipeline_equals_one_by_one(pipe, clips, recorder):
    inputs = [str(clips["door"]), str(clips["tone"]), str(clips["morning"])]
    batched = pipe(inputs, prompt="Describe the audio in detail please.", max_new_tokens=6, batch_size=3)
    assert recorder.encoder_calls == 1 and recorder.encoder_windows == 3  # one encoder pass per clip
    single = [pipe(x, prompt="Describe the audio in detail please.", max_new_tokens=6) for x in inputs]
    assert batched == single


@pytest.mark.compat
@pytest.mark.slow
def test_multi_audio_multi_turn_and_text_only_chats(pipe, clips, recorder):
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(clips["door"])},
                {"type": "audio", "path": str(clips["tone"])},
                {"type": "text", "text": "Compare."},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "The first is speech."}]},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(clips["morning"]), "transcript": "good morning everyone"},
                {"type": "text", "text": "And this?"},
            ],
        },
    ]
    result = pipe(conversation, max_new_tokens=3)
    assert SPOKEN in result["transcripts"][0].lower()
    assert result["transcripts"][1:] == ["", "good morning everyone"]
    assert recorder.placeholders[-1] == [3 * pipe.model.config.num_audio_queries]
    text_only = pipe([{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}], max_new_tokens=3)
    assert text_only["transcripts"] == []
    assert recorder.encoder_calls == 1  # only the audio chat touched the encoder


@pytest.mark.compat
@pytest.mark.slow
def test_audio_over_the_limit_raises_instead_of_cutting(pipe, clips):
    pipe.processor.max_audio_seconds = 40
    try:
        with pytest.raises(ValueError, match="over max_audio_seconds=40"):
            pipe(str(clips["long_45s"]), prompt="What?", max_new_tokens=2)
    finally:
        pipe.processor.max_audio_seconds = 600.0


@pytest.mark.compat
@pytest.mark.slow
def test_missing_audio_is_a_clear_error(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        pipe(str(tmp_path / "nope.wav"), prompt="What?")


@pytest.mark.compat
@pytest.mark.slow
def test_streaming_with_text_iterator_streamer(pipe, clips):
    model, processor = pipe.model, pipe.processor
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": str(clips["door"]), "transcript": SPOKEN},
                {"type": "text", "text": "What?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    expected_text = processor.tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    worker = threading.Thread(
        target=model.generate,
        kwargs={**inputs, "max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "streamer": streamer},
    )
    worker.start()
    pieces = list(streamer)
    worker.join()
    assert "".join(pieces) == expected_text
    pipe_streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(pipe(conversation, streamer=pipe_streamer, max_new_tokens=8, min_new_tokens=8))
    )
    worker.start()
    streamed = "".join(pipe_streamer)
    worker.join()
    assert streamed.strip() == result["generated_text"] == expected_text.strip()


@pytest.mark.compat
@pytest.mark.slow
def test_pip_users_get_the_pipeline_without_remote_code(real_whisper_model_dir, clips):
    model = DestaForConditionalGeneration.from_pretrained(real_whisper_model_dir)
    processor = DestaProcessor.from_pretrained(real_whisper_model_dir)
    local = pipeline("audio-text-to-text", model=model, processor=processor)
    assert isinstance(local, DestaAudioTextToTextPipeline)
    assert SPOKEN in local(str(clips["door"]), prompt="What?", max_new_tokens=2)["transcripts"][0].lower()


@pytest.mark.compat
@pytest.mark.slow
def test_one_line_pipeline_in_clean_process(real_whisper_model_dir, clips, tmp_path, pipe):
    expected = pipe(str(clips["door"]), prompt="What is said?", max_new_tokens=4)
    script = f"""
        from transformers import pipeline
        pipe = pipeline("audio-text-to-text", model={str(real_whisper_model_dir)!r}, trust_remote_code=True)
        result = pipe({str(clips["door"])!r}, prompt="What is said?", max_new_tokens=4)
        assert result == {expected!r}, result
        any_pipe = pipeline("any-to-any", model={str(real_whisper_model_dir)!r}, trust_remote_code=True)
        chat = [{{"role": "user", "content": [{{"type": "audio", "path": {str(clips["door"])!r}, "transcript": "hi"}}, {{"type": "text", "text": "What?"}}]}}]
        out = any_pipe(text=chat, max_new_tokens=3, return_full_text=False)
        assert isinstance(out[0]["generated_text"], str), out
        text_only = any_pipe(text=[{{"role": "user", "content": [{{"type": "text", "text": "Hello"}}]}}], max_new_tokens=3)
        print("PIPELINE_OK")
    """
    assert "PIPELINE_OK" in run_isolated(script, cwd=tmp_path).stdout


def _effective(generate_kwargs: dict, name: str):
    """A generation parameter as `generate` will use it: passed as a kwarg (transformers >= 5.24 pipelines) or in
    the generation config passed with the call (older pipelines)."""
    return generate_kwargs.get(name, getattr(generate_kwargs.get("generation_config"), name, None))


@pytest.mark.compat
@pytest.mark.slow
def test_generation_kwargs_pass_through(pipe, clips, monkeypatch):
    seen = {}
    original = pipe.model.generate

    def spy(**kwargs):
        seen.clear()
        seen.update(kwargs)
        return original(**{**kwargs, "max_new_tokens": min(_effective(kwargs, "max_new_tokens"), 6)})

    monkeypatch.setattr(pipe.model, "generate", spy)
    torch.manual_seed(0)
    first = pipe(str(clips["door"]), prompt="What?", max_new_tokens=6, do_sample=True, top_k=50)
    assert [_effective(seen, name) for name in ("do_sample", "top_k", "max_new_tokens")] == [True, 50, 6]
    torch.manual_seed(0)
    assert pipe(str(clips["door"]), prompt="What?", max_new_tokens=6, do_sample=True, top_k=50) == first
    pipe(str(clips["door"]), prompt="What?")
    assert _effective(seen, "do_sample") in (None, False) and _effective(seen, "max_new_tokens") == 256  # greedy


@pytest.mark.compat
@pytest.mark.slow
def test_transcripts_on_shared_states_equal_whispers_own_generate(pipe, clips):
    """The pipeline's one ASR path (`transcribe_clips`, on the encoder pass that fed the connector) gives the text
    of `whisper.generate` run on the features alone."""
    model, processor = pipe.model, pipe.processor
    waveforms = [processor.load_audio(clips["door"]), processor.load_audio(clips["morning"])]
    features, counts = processor.extract_features(waveforms)
    with torch.no_grad():
        _, states = model.model.encode_audio(features, output_last_hidden_state=True)
        ours = model.transcribe_clips(states, waveforms, counts, processor.asr_tokenizer, processor.window_samples)
        whisper_alone = model.model.audio_tower.generate(input_features=features, max_new_tokens=30)
    expected = [text.strip() for text in processor.asr_tokenizer.batch_decode(whisper_alone, skip_special_tokens=True)]
    assert ours == expected
    assert SPOKEN in ours[0].lower() and "good morning" in ours[1].lower()


@pytest.mark.compat
@pytest.mark.slow
def test_batched_asr_equals_whisper_alone_per_window(pipe, clips):
    """Windows whose transcripts end at different lengths, decoded in one batch by the pipeline's ASR loop, get
    the tokens `whisper.generate` gives each window alone (then padding)."""
    model, processor = pipe.model, pipe.processor
    whisper = model.model.audio_tower
    waveforms = [processor.load_audio(clips[name]) for name in ("door", "morning", "numbers", "hello")]
    features, _ = processor.extract_features(waveforms)
    with torch.no_grad():
        _, states = model.model.encode_audio(features, output_last_hidden_state=True)
        batched = model.transcribe_windows(states, max_new_tokens=30).tokens
        alone = [whisper.generate(input_features=window[None], max_new_tokens=30)[0] for window in features]
    assert len({len(tokens) for tokens in alone}) > 1  # really different lengths
    for row, expected in zip(batched, alone):
        assert torch.equal(row[: len(expected)], expected)
        assert (row[len(expected) :] == whisper.generation_config.pad_token_id).all()


@pytest.mark.compat
@pytest.mark.slow
def test_windows_judged_speech_free_are_never_decoded(pipe, clips):
    decoder_rows = []
    hook = pipe.model.model.audio_tower.get_decoder().register_forward_hook(
        lambda module, args, kwargs, output: decoder_rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    inputs = [str(clips["tone"]), str(clips["door"]), str(clips["noise"]), str(clips["morning"])]
    try:
        results = pipe(inputs, prompt="What?", max_new_tokens=1, batch_size=4)
    finally:
        hook.remove()
    # One no-speech probe over the four windows, then one batched decode of the two speech windows only.
    assert decoder_rows[0] == 4 and max(decoder_rows[1:]) == 2
    assert [r["transcripts"] for r in results][::2] == [[""], [""]]
    assert SPOKEN in results[1]["transcripts"][0].lower() and "good morning" in results[3]["transcripts"][0].lower()


@pytest.mark.compat
@pytest.mark.slow
def test_datasets_audio_column_and_generators_are_batches(pipe, clips):
    import datasets

    paths = [str(clips["door"]), str(clips["morning"])]
    dataset = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio(sampling_rate=16000))
    from_column = pipe(dataset["audio"], prompt="What?", max_new_tokens=2, batch_size=2)
    from_generator = pipe((p for p in paths), prompt="What?", max_new_tokens=2, batch_size=2)
    assert from_column == from_generator == pipe(paths, prompt="What?", max_new_tokens=2, batch_size=2)
    assert SPOKEN in from_column[0]["transcripts"][0].lower()
    with pytest.raises(ValueError, match="Cannot read int as audio"):
        pipe(3, prompt="What?")


@pytest.mark.compat
@pytest.mark.slow
def test_a_chat_and_the_audio_shorthand_get_the_same_default_system_prompt(pipe, clips):
    """`pipe(chat)` and `pipe(path, prompt=...)` once differed: the shorthand added the system prompt, a chat got
    none. The processor owns the default now, for both."""
    from processing import DEFAULT_SYSTEM_PROMPT

    assert pipe.processor.default_system_prompt == DEFAULT_SYSTEM_PROMPT
    chat = [
        {"role": "user", "content": [{"type": "audio", "path": str(clips["door"])}, {"type": "text", "text": "Hi?"}]}
    ]
    shorthand = pipe.preprocess(str(clips["door"]), prompt="Hi?")["text"]
    assert pipe.preprocess(chat)["text"] == shorthand
    assert f"system<|end_header_id|>\n\n{DEFAULT_SYSTEM_PROMPT}<|eot_id|>" in shorthand
    other = pipe.preprocess(str(clips["door"]), prompt="Hi?", system_prompt="Be brief.")["text"]
    assert "Be brief." in other and DEFAULT_SYSTEM_PROMPT not in other


# ----------------------------------------------------------------------------- bad calls (tiny parts)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p([system_chat([tone_item()])] * 2, batch_size=-1), "batch_size must be a positive integer; got -1"),
        (lambda p: p([system_chat([tone_item()])], batch_size=0), "batch_size must be a positive integer; got 0"),
        (lambda p: p([{"content": [tone_item()]}]), "Message 0 has no 'role'"),
        (lambda p: p({"file": "x.wav"}, prompt="hi"), r"Cannot read a dict with keys \['file'\] as audio"),
        (lambda p: p([{"role": "user", "content": None}]), r"Message 0 \(user\) has content None"),
    ],
    ids=["batch_size=-1", "batch_size=0", "message without role", "dict without audio", "content None"],
)
def test_pipeline_bad_calls(tiny_pipe, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_pipe)


def test_pipeline_untrusted_policy_per_call(tiny_pipe, audio_dir):
    untrusted = AudioSourcePolicy.for_input(trusted_input=False)
    with pytest.raises(AudioSourceError, match="local audio paths are not allowed"):
        tiny_pipe(str(audio_dir / "tone.wav"), prompt="hi", audio_policy=untrusted, max_new_tokens=1)


def test_overlong_transcript_warns_against_max_positions(tiny_pipe, monkeypatch, caplog):
    monkeypatch.setattr(tiny_pipe.model.config.text_config, "max_position_embeddings", 128)
    chat = system_chat([tone_item(transcript="word " * 200), {"type": "text", "text": "hi"}])
    with caplog.at_level(logging.WARNING, logger="processing.pipeline_desta"):
        tiny_pipe(chat, max_new_tokens=1)
    assert any("over the LLM's max_position_embeddings=128" in r.getMessage() for r in caplog.records)
