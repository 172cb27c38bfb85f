"""The lean greedy Whisper loop (`modeling_desta.transcription_desta`) against `whisper.generate` itself: the real
tiny.en on speech, and a random multilingual Whisper for the prompt rules (language detection, configured
language and task, legacy forced tokens)."""

import pytest
import torch
from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from desta_audio import testing as tiny_assets
from modeling_desta import DestaForConditionalGeneration
from modeling_desta.transcription_desta import transcribe_windows
from processing import load_audio

# Part of the short suite run on the oldest supported transformers too (`pytest -m compat`).
# Slow (real Whisper, subprocesses, servers or a browser): left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.compat, pytest.mark.slow]

MAX_NEW_TOKENS = 30
# Whisper v2's 99 language tokens in its own order (<|en|> = 50259, <|zh|>, <|de|>, <|es|>, ...).
CODES = list(dict.fromkeys(TO_LANGUAGE_CODE.values()))[:99]
LANGUAGES = {f"<|{code}|>": 50259 + index for index, code in enumerate(CODES)}
TASKS = {"translate": 50358, "transcribe": 50359}


def generate_alone(whisper, features, max_new_tokens=MAX_NEW_TOKENS, **kwargs):
    """`whisper.generate`'s full sequences (prompt included), its encoder run on `features` inside."""
    return whisper.generate(
        input_features=features, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True, **kwargs
    )


def encode(whisper, features):
    with torch.no_grad():
        return whisper.get_encoder()(features).last_hidden_state


def assert_same_tokens(ours: torch.Tensor, sequence: torch.Tensor, config: GenerationConfig):
    """`ours` (generated tokens, then padding) equals what `generate` produced after its prompt."""
    end_of_prompt = int(torch.nonzero(sequence == config.no_timestamps_token_id)[0])
    expected = sequence[end_of_prompt + 1 :]
    ended = torch.nonzero(expected == config.eos_token_id).flatten()
    if ended.numel():
        expected = expected[: int(ended[0]) + 1]
    assert len(expected) > 0 and torch.equal(ours[: len(expected)], expected)
    assert (ours[len(expected) :] == config.pad_token_id).all()


@pytest.fixture(scope="module")
def real_whisper(real_whisper_dir):
    return WhisperForConditionalGeneration.from_pretrained(real_whisper_dir).eval()


@pytest.fixture(scope="module")
def speech_features(real_whisper_dir, tmp_path_factory, audio_dir):
    """Features of three windows whose transcripts end at different lengths, and a tone."""
    work = tmp_path_factory.mktemp("transcription")
    sentences = ["please open the door", "good morning everyone", "one two three four five six seven eight nine"]
    paths = [tiny_assets.speak(work / f"s{index}.wav", text) for index, text in enumerate(sentences)]
    waveforms = [load_audio(path) for path in paths] + [load_audio(audio_dir / "tone.wav")]
    extractor = WhisperFeatureExtractor.from_pretrained(real_whisper_dir)
    return extractor(waveforms, sampling_rate=16000, return_tensors="pt").input_features


@pytest.fixture(scope="module")
def speech_states(real_whisper, speech_features):
    return encode(real_whisper, speech_features)


def test_real_speech_tokens_equal_whisper_generate_window_by_window(
    real_whisper, real_whisper_dir, speech_features, speech_states
):
    config = real_whisper.generation_config
    result = transcribe_windows(real_whisper, speech_states[:3], MAX_NEW_TOKENS)
    lengths = set()
    for row, features in enumerate(speech_features[:3]):
        alone = generate_alone(real_whisper, features[None]).sequences[0]
        assert_same_tokens(result.tokens[row], alone, config)
        lengths.add(int((result.tokens[row] != config.pad_token_id).sum()))
    assert len(lengths) == 3  # windows left the batch at different steps
    texts = WhisperTokenizer.from_pretrained(real_whisper_dir).batch_decode(result.tokens, skip_special_tokens=True)
    assert "please open the door" in texts[0].lower() and "good morning" in texts[1].lower()


def test_mean_logprob_and_no_speech_equal_generates_scores(real_whisper, speech_features, speech_states):
    config = real_whisper.generation_config
    output = generate_alone(real_whisper, speech_features, output_scores=True)
    generated = output.sequences[:, -len(output.scores) :]
    logprobs = torch.stack(
        [step.log_softmax(dim=-1).gather(1, generated[:, i, None])[:, 0] for i, step in enumerate(output.scores)], 1
    )
    counted = generated != config.pad_token_id
    expected = (logprobs * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)
    result = transcribe_windows(real_whisper, speech_states, MAX_NEW_TOKENS)
    torch.testing.assert_close(result.mean_logprob, expected, atol=2e-5, rtol=1e-4)
    start = torch.full((4, 1), config.decoder_start_token_id)
    with torch.no_grad():
        logits = real_whisper(encoder_outputs=(speech_states,), decoder_input_ids=start).logits[:, 0]
    no_speech = logits.softmax(dim=-1)[:, config.no_timestamps_token_id - 1]
    torch.testing.assert_close(result.no_speech_probability, no_speech)
    assert result.no_speech_probability[3] > 0.6 > result.no_speech_probability[:3].max()  # the tone


def test_windows_over_the_no_speech_threshold_are_never_decoded(real_whisper, speech_states):
    rows = []
    hook = real_whisper.get_decoder().register_forward_hook(
        lambda module, args, kwargs, output: rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        result = transcribe_windows(real_whisper, speech_states, MAX_NEW_TOKENS, no_speech_threshold=0.6)
    finally:
        hook.remove()
    assert result.decoded.tolist() == [True, True, True, False]
    assert (result.tokens[3] == real_whisper.generation_config.pad_token_id).all() and result.mean_logprob[3] == 0
    assert rows[0] == 4 and max(rows[1:]) == 3 and rows[-1] == 1  # probe on all; the tone never decoded


def test_zero_new_tokens_decodes_nothing(real_whisper, speech_states):
    result = transcribe_windows(real_whisper, speech_states[:1], 0)
    assert result.tokens.shape == (1, 0) and result.decoded.tolist() == [True]


@pytest.fixture(scope="module")
def multilingual_whisper():
    """A random Whisper with a multilingual generation config: windows pick different languages."""
    whisper = tiny_assets.build_whisper(d_model=64, seed=4)
    whisper.generation_config = GenerationConfig(
        decoder_start_token_id=50258,
        bos_token_id=50257,
        eos_token_id=50257,
        pad_token_id=50257,
        no_timestamps_token_id=50363,
        is_multilingual=True,
        lang_to_id=LANGUAGES,
        task_to_id=TASKS,
        suppress_tokens=[1, 2, 7, 8, 9],
        begin_suppress_tokens=[220, 50257],
        max_length=64,
    )
    return whisper


@pytest.fixture(scope="module")
def random_features():
    """Six windows of noise at different scales (this random model detects three languages among them)."""
    torch.manual_seed(0)
    return torch.randn(6, 80, 3000) * torch.tensor([0.1, 0.5, 1, 2, 4, 8])[:, None, None]


@pytest.mark.parametrize(
    "settings",
    [
        {"forced_decoder_ids": [[1, None], [2, TASKS["transcribe"]]]},  # large-v3's own: detect, then transcribe
        {},  # detect the language, no task token
        {"language": "fr", "task": "translate"},
        {"language": "german"},  # a configured language implies transcribe
        {"forced_decoder_ids": [[1, LANGUAGES["<|es|>"]], [2, TASKS["translate"]]]},  # forced language: no detection
    ],
    ids=["forced-detect", "detect", "fr-translate", "german", "forced-language"],
)
def test_multilingual_prompts_equal_whisper_generate(multilingual_whisper, random_features, settings):
    config = multilingual_whisper.generation_config
    previous = {key: getattr(config, key, None) for key in ("forced_decoder_ids", "language", "task")}
    try:
        for key in previous:
            setattr(config, key, settings.get(key))
        result = transcribe_windows(multilingual_whisper, encode(multilingual_whisper, random_features), 12)
        theirs = generate_alone(multilingual_whisper, random_features, max_new_tokens=12).sequences
    finally:
        for key, value in previous.items():
            setattr(config, key, value)
    for ours, expected in zip(result.tokens, theirs):
        assert_same_tokens(ours, expected, config)
    if "language" not in settings and not settings.get("forced_decoder_ids", [[1, None]])[0][1]:
        assert len({int(row[1]) for row in theirs}) > 1  # the windows really detected different languages


def test_unknown_language_is_a_clear_error(multilingual_whisper, random_features):
    multilingual_whisper.generation_config.language = "klingon"
    try:
        with pytest.raises(ValueError, match="Unsupported language 'klingon'"):
            transcribe_windows(multilingual_whisper, encode(multilingual_whisper, random_features[:1]), 4)
    finally:
        multilingual_whisper.generation_config.language = None


def test_desta_transcribe_detects_languages_with_a_multilingual_whisper(
    multilingual_whisper, random_features, llm_dir, tmp_path
):
    """ASR on shared encoder states once passed placeholder features beside the encoder outputs, and a multilingual
    Whisper's language detection then raised "specify only one of input_features or encoder_outputs" (the release's
    whisper-large-v3 detects languages). The one ASR path equals `generate`, language detection included."""
    multilingual_whisper.save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / "whisper")
    model = DestaForConditionalGeneration.from_components(
        llm_dir, tmp_path / "whisper", num_audio_queries=4, qformer_num_hidden_layers=1, qformer_intermediate_size=32
    ).eval()
    config = model.model.audio_tower.generation_config
    with torch.no_grad():
        _, states = model.model.encode_audio(random_features, output_last_hidden_state=True)
    expected = generate_alone(multilingual_whisper, random_features, max_new_tokens=8).sequences
    assert len({int(row[1]) for row in expected}) > 1
    for ours, theirs in zip(model.transcribe_windows(states, max_new_tokens=8).tokens, expected):
        assert_same_tokens(ours, theirs, config)


def test_more_new_tokens_than_whisper_positions_is_a_clear_error(real_whisper, speech_states):
    limit = real_whisper.config.max_target_positions
    with pytest.raises(ValueError, match=f"max_new_tokens=447 plus the 2-token Whisper prompt exceeds.*{limit}"):
        transcribe_windows(real_whisper, speech_states[:1], limit - 1)
    assert transcribe_windows(real_whisper, speech_states[:1], limit - 2).tokens.shape == (1, limit - 2)


def test_whisper_without_its_generation_config_is_a_clear_error(random_features):
    bare = tiny_assets.build_whisper(d_model=64, seed=4)  # a generation config derived from the model config
    with pytest.raises(ValueError, match="generation_config has no no_timestamps_token_id"):
        transcribe_windows(bare, encode(bare, random_features[:1]), 4)


def test_the_builders_asr_gives_a_tone_an_empty_transcript_and_speech_its_words(real_whisper_dir, llm_dir, tmp_path):
    """`build_dataset.py --asr-model` goes through the pipeline's speech/no-speech rule: the tone that Whisper alone
    hallucinates words for gets no transcript (and so no words in its seed description); speech keeps its words."""
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    tiny_assets.speak(tmp_path / "door.wav", "please open the door")
    tiny_assets.sox_synth(tmp_path / "tone.wav", 3.0, freq=440)
    (tmp_path / "meta.jsonl").write_text(
        json.dumps({"file": "door.wav"}) + "\n" + json.dumps({"file": "tone.wav"}) + "\n"
    )
    out = tmp_path / "out"
    command = [
        sys.executable, "build_dataset.py", "--audio-dir", str(tmp_path), "--metadata", str(tmp_path / "meta.jsonl"),
        "--audio-column", "file", "--model", str(llm_dir), "--asr-model", str(real_whisper_dir), "--device", "cpu",
        "--max-new-tokens", "4", "--output-dir", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["id"]: r for path in (out / "records").glob("*.jsonl") for r in map(json.loads, path.open())}
    assert records["tone.wav"]["transcript"] == ""
    assert records["tone.wav"]["seed_description"].startswith("[00:00-00:03] (")
    assert "open the door" in records["door.wav"]["transcript"].lower()
    whisper = WhisperForConditionalGeneration.from_pretrained(real_whisper_dir)
    tone = WhisperFeatureExtractor.from_pretrained(real_whisper_dir)(
        load_audio(str(tmp_path / "tone.wav")), sampling_rate=16000, return_tensors="pt"
    ).input_features
    alone = WhisperTokenizer.from_pretrained(real_whisper_dir).decode(
        whisper.generate(input_features=tone, max_new_tokens=20)[0], skip_special_tokens=True
    )
    assert alone.strip()  # what the builder wrote before: Whisper alone puts words on a tone
