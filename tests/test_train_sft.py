"""train_sft.py and its library (`desta_audio.training`), offline on CPU.

The learning test uses the real Whisper tiny.en; everything else runs on the tiny random components of conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, free_port
from transformers.utils import is_torch_bf16_gpu_available

from desta_audio import testing as tiny_assets
from desta_audio.testing import sft_record
from desta_audio.training.collator import (
    IGNORE_INDEX,
    BadRecordError,
    DestaSFTCollator,
    normalize_record,
)
from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor

SYSTEM = "Focus on the audio clips and instructions."
SUBPROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}
CPU_TRAINING = "--bf16 false --activation_checkpointing false --report_to none --disable_tqdm true".split()
SMALL_CONNECTOR = ["--num_audio_queries", "4", "--qformer_num_hidden_layers", "1", "--qformer_intermediate_size", "64"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_args(**overrides):
    from desta_audio.training import DestaSFTConfig

    options = {
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
        "seed": 0,
    }
    return DestaSFTConfig(**{**options, **overrides})


def small_model(llm_dir, whisper_dir, **overrides):
    processor = DestaProcessor.from_components(llm_dir, whisper_dir, num_audio_queries=4)
    model = DestaForConditionalGeneration.from_components(
        llm_dir,
        whisper_dir,
        processor=processor,
        qformer_num_hidden_layers=1,
        qformer_intermediate_size=64,
        **overrides,
    )
    return model, processor


def script_arguments(**overrides):
    from desta_audio.training import DestaScriptArguments

    return DestaScriptArguments(dataset_name=None, **overrides)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


def run(command: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run in a new session; on a timeout kill every process it started (e.g. DDP ranks) and fail.

    Output goes to files, not pipes, so that a stray grandchild holding them cannot block the test.
    """
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    assert process.returncode == 0, f"exit {process.returncode} (timeout {timeout} s):\n{out[-3000:]}{err[-6000:]}"
    return subprocess.CompletedProcess(command, process.returncode, out, err)


# ----------------------------------------------------------------------------- collator


@pytest.mark.compat
def test_labels_cover_exactly_the_response_and_end_of_turn(tiny_parts, audio_dir):
    _, processor = tiny_parts
    collator = DestaSFTCollator(processor, audio_root=audio_dir)
    response = "A man says hello world, calmly."
    encoded = collator.encode(sft_record("r1", "hello.wav", response, transcript="hello world"))

    tokenizer = processor.tokenizer
    expected = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    labelled = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert [encoded.labels[i] for i in labelled] == expected
    assert labelled == list(range(len(encoded.input_ids) - len(expected), len(encoded.input_ids)))
    assert [encoded.input_ids[i] for i in labelled] == expected
    # Everything before the answer is prompt: system, user, audio placeholders, transcript, assistant header.
    assert encoded.input_ids.count(processor.audio_token_id) == processor.num_audio_queries
    prompt = tokenizer.decode(encoded.input_ids[: labelled[0]])
    assert "hello world<end_audio>" in prompt and prompt.endswith("assistant<|end_header_id|>\n\n")
    assert encoded.input_features.shape[0] == 1


@pytest.mark.compat
def test_assistant_tokens_mask_is_exactly_the_collators_labels(tiny_parts, audio_dir):
    """`return_assistant_tokens_mask` (what TRL's `assistant_only_loss=True` reads) through the template's
    `{% generation %}` marks the same positions the collator labels, so either gives the same loss."""
    _, processor = tiny_parts
    collator = DestaSFTCollator(processor, audio_root=audio_dir)
    record = sft_record("r1", "hello.wav", "A man says hello world, calmly.", transcript="hello world")
    encoded = collator.encode(record)
    chat = [*record["messages"], {"role": "assistant", "content": [{"type": "text", "text": record["response"]}]}]
    chat[1]["content"][0]["path"] = str(audio_dir / "hello.wav")
    masked = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert masked["input_ids"][0].tolist() == encoded.input_ids
    mask = masked["assistant_masks"][0].tolist()
    assert mask == [int(label != IGNORE_INDEX) for label in encoded.labels] and sum(mask) > 5
    logits = torch.randn(1, len(mask), len(processor.tokenizer))
    labels = torch.tensor([encoded.labels])
    from_mask = torch.where(torch.tensor([mask]).bool(), masked["input_ids"], IGNORE_INDEX)
    shift = lambda t: t[:, 1:].reshape(-1)  # noqa: E731
    loss_from_labels = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shift(labels))
    loss_from_mask = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shift(from_mask))
    assert torch.equal(loss_from_labels, loss_from_mask)


def test_reference_format_and_final_assistant_turn_give_the_same_example(tiny_parts, audio_dir):
    """DeSTA-AQA5M's string content with <|AUDIO|> + `audios`, and a final assistant message instead of `response`."""
    _, processor = tiny_parts
    collator = DestaSFTCollator(processor, audio_root=audio_dir)
    ours = collator.encode(sft_record("a", "hello.wav", "Hello.", transcript="hello world"))
    reference = {
        "id": "b",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": "<|AUDIO|>\n\nWhat is it?",
                "audios": [{"audio": "hello.wav", "text": "hello world"}],
            },
            {"role": "assistant", "content": "Hello."},
        ],
    }
    theirs = collator.encode(reference)
    assert theirs.input_ids == ours.input_ids and theirs.labels == ours.labels
    assert torch.equal(theirs.input_features, ours.input_features)


def test_audio_from_the_record_column_and_arrays(tiny_parts):
    _, processor = tiny_parts
    clip = {"array": tiny_assets.sine(1.0), "sampling_rate": 16000}
    row = sft_record("c", None, "A tone.")
    row["audio"] = clip  # a datasets Audio value fills the item that names no audio
    example = normalize_record(row)
    item = example.messages[1]["content"][0]
    assert item["audio"] is clip and "path" not in item
    assert (
        normalize_record(sft_record("d", "x/y.wav", "ok"), audio_root="/data").messages[1]["content"][0]["path"]
        == "/data/x/y.wav"
    )
    batch = DestaSFTCollator(processor)([row])
    assert batch["input_features"].shape[0] == 1


@pytest.mark.compat
def test_padding_left_or_right_gives_the_same_loss(tiny_parts, audio_dir):
    model, processor = tiny_parts
    rows = [
        sft_record("a", "hello.wav", "Short."),
        sft_record("b", "numbers.wav", "A longer answer with more words in it."),
    ]
    losses = {}
    for side in ("left", "right"):
        batch = DestaSFTCollator(processor, audio_root=audio_dir, padding_side=side)(rows)
        pad_column = 0 if side == "left" else -1
        assert batch["attention_mask"][0, pad_column] == 0 and batch["labels"][0, pad_column] == IGNORE_INDEX
        with torch.no_grad():
            losses[side] = model(**batch).loss
    torch.testing.assert_close(losses["left"], losses["right"])


def test_bad_records_raise_or_are_skipped_and_counted_never_trained_without_audio(tiny_parts, audio_dir):
    _, processor = tiny_parts
    good = sft_record("good", "hello.wav", "Hello.")
    missing = sft_record("missing", "no_such_file.wav", "Hello.")
    text_only = {
        "id": "text",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "response": "Hi.",
    }
    long_answer = sft_record("long", "hello.wav", "word " * 200)

    strict = DestaSFTCollator(processor, audio_root=audio_dir, max_length=100)
    for bad, reason in ((missing, "missing_audio"), (text_only, "no_audio"), (long_answer, "too_long")):
        with pytest.raises(BadRecordError) as error:
            strict([good, bad])
        assert error.value.reason == reason and repr(bad["id"]) in str(error.value)

    lenient = DestaSFTCollator(processor, audio_root=audio_dir, max_length=100, on_bad_record="skip")
    batch = lenient([missing, good, text_only, long_answer])
    assert batch["input_ids"].shape[0] == 1 and batch["input_features"].shape[0] == 1
    assert batch["input_ids"].shape[1] <= 100
    assert int((batch["input_ids"] == processor.audio_token_id).sum()) == processor.num_audio_queries
    assert lenient.skipped == {"missing_audio": 1, "no_audio": 1, "too_long": 1}
    with pytest.raises(BadRecordError, match="every record of this batch was skipped"):
        lenient([missing])


@pytest.mark.slow
def test_skip_never_aborts_even_when_a_whole_batch_is_bad(llm_dir, whisper_dir, audio_dir, tmp_path):
    """Batch size 1, two bad records of four: every step still trains, on a good record drawn in their place."""
    import datasets
    from trl import ModelConfig

    from desta_audio.training import build_trainer, load_model_and_processor

    args = script_arguments(
        llm=str(llm_dir),
        whisper=str(whisper_dir),
        num_audio_queries=4,
        qformer_num_hidden_layers=1,
        qformer_intermediate_size=64,
        on_bad_record="skip",
    )
    model, processor = load_model_and_processor(args, ModelConfig(dtype="float32"), seed=0)
    rows = [
        sft_record("bad-0", str(tmp_path / "gone.wav"), "A tone."),
        sft_record("bad-1", str(audio_dir / "corrupt.wav"), "A tone."),
    ]
    rows += [sft_record(f"good-{i}", str(audio_dir / "tone.wav"), "A tone.") for i in range(2)]
    trainer = build_trainer(
        model,
        processor,
        sft_args(
            output_dir=str(tmp_path / "run"),
            per_device_train_batch_size=1,
            max_steps=4,
            save_strategy="no",
            use_cpu=True,
        ),
        args,
        train_dataset=datasets.Dataset.from_list(rows),
    )
    result = trainer.train()
    assert trainer.state.global_step == 4 and np.isfinite(result.training_loss)
    assert trainer.data_collator.skipped["missing_audio"] >= 1 and trainer.data_collator.skipped["bad_audio"] >= 1


def test_streamed_dataset_filters_bad_records_before_batching(tiny_parts, audio_dir, tmp_path):
    import datasets

    from desta_audio.training import skip_bad_records

    _, processor = tiny_parts
    rows = [
        sft_record("bad", str(tmp_path / "gone.wav"), "A tone."),
        sft_record("good", str(audio_dir / "tone.wav"), "A tone."),
    ]
    collator = DestaSFTCollator(processor, on_bad_record="skip")
    stream = skip_bad_records(datasets.Dataset.from_list(rows).to_iterable_dataset(), collator)
    assert [r["id"] for r in stream] == ["good"] and collator.skipped == {"missing_audio": 1}


# ----------------------------------------------------------------------------- data and recipe


def test_dataset_loading_from_build_dataset_folders_and_files(tmp_path):
    import datasets

    from desta_audio.training import DestaScriptArguments, load_sft_dataset

    rows = [sft_record(f"r{i}", f"{i}.wav", "ok") for i in range(3)]
    records_only = tmp_path / "records_only"
    write_jsonl(records_only / "records" / "shard-00000-of-00001.jsonl", rows)
    merged = tmp_path / "merged"
    datasets.Dataset.from_list(rows).save_to_disk(str(merged / "dataset"))
    files = write_jsonl(tmp_path / "files" / "train.jsonl", rows)

    for arguments in ({"dataset_name": str(records_only)}, {"dataset_name": str(merged)}, {"data_files": [str(files)]}):
        train = load_sft_dataset(DestaScriptArguments(**arguments))["train"]
        assert train["id"] == ["r0", "r1", "r2"], arguments


def test_recipe_yaml_is_the_release_recipe():
    sys.path.insert(0, str(REPO_ROOT))
    import train_sft

    config = str(REPO_ROOT / "recipes" / "desta25_sft.yaml")
    script_args, training_args, model_args = train_sft.make_parser().parse_args_and_config(
        ["--config", config, "--output_dir", "unused", "--llm", "L", "--whisper", "W", "--use_cpu", "true"]
    )
    assert (training_args.learning_rate, training_args.adam_beta1, training_args.adam_beta2) == (1e-4, 0.9, 0.98)
    assert (training_args.weight_decay, training_args.max_grad_norm, training_args.warmup_steps) == (0.01, 1.0, 5000)
    assert training_args.lr_scheduler_type == "cosine" and training_args.optim == "adamw_torch"
    assert training_args.bf16 and training_args.gradient_checkpointing and training_args.max_length == 300
    assert script_args.max_transcript_tokens == 100 and script_args.num_audio_queries == 64 and not model_args.use_peft


DEPRECATIONS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)


@pytest.mark.parametrize(
    "flags, checkpointing",
    [
        (["--config", str(REPO_ROOT / "recipes" / "desta25_sft.yaml"), "--use_cpu", "true"], True),
        ([], True),  # TRL's default
        (["--activation_checkpointing", "false"], False),
        (["--gradient_checkpointing", "false"], False),  # TRL's name for it, still taken
    ],
    ids=["recipe", "defaults", "activation_checkpointing", "gradient_checkpointing"],
)
def test_recipe_and_flags_raise_no_deprecation_warning(flags, checkpointing, recwarn):
    sys.path.insert(0, str(REPO_ROOT))
    import train_sft
    from desta_audio.training.arguments import HAS_ACTIVATION_CHECKPOINTING

    argv = [*flags, "--output_dir", "unused", "--llm", "L", "--whisper", "W", "--report_to", "none"]
    _, training_args, _ = train_sft.make_parser().parse_args_and_config(argv)
    assert [str(w.message) for w in recwarn if issubclass(w.category, DEPRECATIONS)] == []
    assert training_args.gradient_checkpointing is checkpointing
    if HAS_ACTIVATION_CHECKPOINTING:
        assert training_args.activation_checkpointing is checkpointing


def test_a_short_run_raises_no_deprecation_warning(llm_dir, whisper_dir, audio_dir, tmp_path, recwarn):
    """Two steps of train_sft.py as a user runs it: every deprecation our code, recipe or defaults trip is named."""
    sys.path.insert(0, str(REPO_ROOT))
    import train_sft

    data = write_jsonl(
        tmp_path / "data.jsonl", [sft_record(f"r{i}", str(audio_dir / "tone.wav"), "A tone.") for i in range(2)]
    )
    components = ["--llm", str(llm_dir), "--whisper", str(whisper_dir), *SMALL_CONNECTOR, *CPU_TRAINING]
    run = ["--data_files", str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--use_cpu", "true"]
    assert train_sft.run([*components, *run, "--per_device_train_batch_size", "1"]) == 0
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in recwarn if issubclass(w.category, DEPRECATIONS)] == []


def test_model_card_is_the_full_card_for_hub_ids_else_a_minimal_one(tiny_parts, tmp_path):
    from desta_audio.hub.card import write_model_card

    model, processor = tiny_parts
    info = {
        "llm": "meta-llama/Llama-3.1-8B-Instruct", "whisper": "openai/whisper-large-v3", "dataset": "DeSTA-ntu/DeSTA-AQA5M",
        "repo_id": "someone/desta-ft", "license": "other", "global_step": 10, "epoch": 1.0, "final_loss": 1.25,
        "learning_rate": 1e-4, "audio_token": processor.audio_token,
    }  # fmt: skip
    full = write_model_card(tmp_path / "full", model.config, info).read_text()
    assert "base_model_relation: finetune" in full and '- "DeSTA-ntu/DeSTA-AQA5M"' in full
    assert "| steps | 10 |" in full and "| loss | 1.25 |" in full
    local = write_model_card(
        tmp_path / "local", model.config, {**info, "llm": str(tmp_path), "dataset": str(tmp_path)}
    ).read_text()
    assert (
        "base_model_relation" not in local and "| steps | 10 |" in local and "pipeline_tag: audio-text-to-text" in local
    )


def test_train_data_tolerates_a_torn_last_line_and_names_a_corrupt_one(tmp_path, caplog):
    from desta_audio.training import load_sft_dataset

    rows = [sft_record(f"r{i}", "clip.wav", "A tone.") for i in range(3)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "r3", "mess')
    with caplog.at_level(logging.WARNING):
        loaded = load_sft_dataset(script_arguments(data_files=[str(path)]))
    assert loaded["train"]["id"] == ["r0", "r1", "r2"]
    assert any("data.jsonl" in r.getMessage() and "last line" in r.getMessage() for r in caplog.records)
    path.write_text(json.dumps(rows[0]) + "\n{broken\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(Exception, match=rf"{path}:2 is not valid JSON"):
        load_sft_dataset(script_arguments(data_files=[str(path)]))
    path.write_bytes(json.dumps(rows[0]).encode() + b'\n{"id": "caf\xe9"}\n' + json.dumps(rows[1]).encode() + b"\n")
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8 text: byte 0xe9 at line 2"):
        load_sft_dataset(script_arguments(data_files=[str(path)]))


# ----------------------------------------------------------------------------- learning


ANSWERS = {"speech": "It is speech.", "tone": "It is a tone.", "noise": "It is noise."}
INSTRUCTION = "What is it?"


@pytest.fixture(scope="module")
def describing_llm_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny LLM taught, from text only, to answer from a description inside the audio span.

    This stands in for DeSTA's premise (the LLM already answers from a text description of the audio), so the
    frozen LLM has something to say and the connector must learn to "describe" the sound to it. Its embeddings
    start at a scale comparable to the connector's outputs.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    llm = tiny_assets.build_llm(tokenizer, seed=0)
    with torch.no_grad():
        llm.get_input_embeddings().weight.mul_(25.0)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=3e-3)
    llm.train()
    for _ in range(60):
        batch = [_description_example(tokenizer, rng.choice(list(ANSWERS)), rng.randint(1, 16)) for _ in range(16)]
        llm(**_pad_text_batch(batch, tokenizer.pad_token_id)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path_factory.mktemp("describing_llm")
    llm.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _description_example(tokenizer, kind: str, repeats: int) -> tuple[list[int], list[int]]:
    user = {"role": "user", "content": "<start_audio>" + f" {kind}" * repeats + f"<end_audio>\n\n{INSTRUCTION}"}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": ANSWERS[kind]}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False).input_ids
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def _pad_text_batch(batch, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch]),
        "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in batch]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch]),
    }


@pytest.fixture(scope="module")
def sound_kinds(tmp_path_factory) -> tuple[Path, list[tuple[str, str]], list[tuple[str, str]]]:
    """(folder, train clips, held-out clips) of speech (espeak), tones and noise (sox), as (file, kind) pairs.

    Held-out clips use other words, other frequencies and brown noise, never seen in training.
    """
    if not tiny_assets.tools_available():
        pytest.skip("espeak-ng and sox are required")
    folder = tmp_path_factory.mktemp("sound_kinds")
    train_words = [
        "hello there",
        "open the door",
        "seven eight",
        "good morning",
        "turn left now",
        "thank you",
        "the red house",
        "call me later",
    ]
    voices = ["en-us", "en", "en-us+f3", "en+m3"]

    def make(split, words, freqs, tone_kinds, noise_kinds):
        clips = []
        for i, (word, freq) in enumerate(zip(words, freqs)):
            name = f"{split}_speech{i}.wav"
            tiny_assets.speak(
                folder / name, ". ".join([word] * 12), voice=voices[i % len(voices)], speed=130 + 15 * (i % 3)
            )
            clips.append((name, "speech"))
            name = f"{split}_tone{i}.wav"
            tiny_assets.sox_synth(folder / name, 20 + 2 * (i % 4), kind=tone_kinds[i % len(tone_kinds)], freq=freq)
            clips.append((name, "tone"))
            name = f"{split}_noise{i}.wav"
            tiny_assets.sox_synth(folder / name, 20 + 2 * (i % 4), kind=noise_kinds[i % len(noise_kinds)])
            clips.append((name, "noise"))
        return clips

    train = make(
        "train",
        train_words,
        [220, 300, 440, 520, 660, 880, 1000, 1200],
        ["sine", "square"],
        ["whitenoise", "pinknoise"],
    )
    held_out = make(
        "test",
        ["where is it", "nine ten", "blue sky"],
        [350, 750, 1500],
        ["sine"],
        ["whitenoise", "pinknoise", "brownnoise"],
    )
    return folder, train, held_out


def memoize_frozen_audio_path(model, processor) -> None:
    """Cache log-mel features per clip and the frozen Whisper encoder's taps per window.

    Both are pure functions of the clip (the encoder is frozen and has no dropout), so caching is exact; it keeps
    a few hundred CPU steps affordable, since they would otherwise be spent re-encoding the same 24 clips.
    """
    features_cache, taps_cache = {}, {}
    extract_features, encode_audio = processor.extract_features, model.model.encode_audio

    def cached_extract_features(waveforms):
        key = hashlib.sha1(b"".join(w.tobytes() for w in waveforms)).hexdigest()
        if key not in features_cache:
            features_cache[key] = extract_features(waveforms)
        return features_cache[key]

    def cached_encode_audio(input_features, output_last_hidden_state=False):
        if output_last_hidden_state:
            return encode_audio(input_features, True)
        windows = []
        for window in input_features:
            key = hashlib.sha1(window.numpy().tobytes()).hexdigest()
            if key not in taps_cache:
                with torch.no_grad():
                    taps_cache[key] = [tap[0] for tap in encode_audio(window[None])[0]]
            windows.append(taps_cache[key])
        return [torch.stack(tap) for tap in zip(*windows)], None

    processor.extract_features = cached_extract_features
    model.model.encode_audio = cached_encode_audio


def classify(model, processor, path: Path) -> str:
    conversation = [
        {"role": "user", "content": [{"type": "audio", "path": str(path)}, {"type": "text", "text": INSTRUCTION}]}
    ]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_connector_learns_what_the_audio_is_and_nothing_frozen_moves(describing_llm_dir, real_whisper_dir, sound_kinds):
    """The answer depends on the audio only (same text, no transcript); training must find it in the sound."""
    import datasets

    from desta_audio.training import (
        DestaScriptArguments,
        build_trainer,
        freeze_for_sft,
        trainable_parameter_names,
    )

    folder, train_clips, held_out = sound_kinds
    torch.manual_seed(0)
    processor = DestaProcessor.from_components(describing_llm_dir, real_whisper_dir, num_audio_queries=16)
    model = DestaForConditionalGeneration.from_components(
        describing_llm_dir,
        real_whisper_dir,
        processor=processor,
        qformer_num_hidden_layers=1,
        qformer_intermediate_size=256,
        audio_layer_ids=[3],
        qformer_hidden_dropout_prob=0.0,  # the class signal is a few % of the connector output at init;
        qformer_attention_dropout_prob=0.0,  # 10 % dropout noise would drown it for this short run
    )
    freeze_for_sft(model)
    assert {name.split(".")[1] for name in trainable_parameter_names(model)} == {"connector"}
    before = snapshot(model)
    memoize_frozen_audio_path(model, processor)

    rows = [sft_record(name, name, ANSWERS[kind], instruction=INSTRUCTION) for name, kind in train_clips]
    for row in rows:
        del row["messages"][0]  # no system prompt: a shorter prompt for the tiny LLM
    args = sft_args(
        output_dir=str(folder / "run"),
        max_steps=200,
        per_device_train_batch_size=2,
        learning_rate=5e-4,
        adam_beta2=0.98,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_steps=10,
        save_strategy="no",
    )
    trainer = build_trainer(
        model, processor, args, DestaScriptArguments(audio_root=str(folder)), datasets.Dataset.from_list(rows)
    )
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] / 3, losses
    model.eval()
    answers = {name: classify(model, processor, folder / name) for name, _ in held_out}
    correct = sum(ANSWERS[kind] == answers[name].strip() for name, kind in held_out)
    assert correct >= 2 * len(held_out) / 3, answers  # chance is 1/3

    moved = changed(before, model.state_dict())
    assert moved and all(name.startswith("model.connector.") for name in moved), sorted(moved)[:5]


def test_frozen_whisper_builds_no_graph_under_activation_checkpointing(llm_dir, whisper_dir, audio_dir):
    """Checkpointing (and PEFT) hook every input embedding to require grad, Whisper's conv1 included; a frozen
    encoder must still run without autograd, or each step would backpropagate through all of Whisper."""
    from desta_audio.training import freeze_for_sft

    model, processor = small_model(llm_dir, whisper_dir)
    freeze_for_sft(model).train()
    model.activation_checkpointing_enable()
    batch = DestaSFTCollator(processor, audio_root=audio_dir)([sft_record("r", "hello.wav", "Hello.")])
    taps, _ = model.model.encode_audio(batch["input_features"])
    assert not any(tap.requires_grad for tap in taps)
    model(**batch).loss.backward()
    assert all(p.grad is not None for p in model.model.connector.parameters())
    model.model.audio_tower.model.encoder.layers[0].fc1.weight.requires_grad_(True)  # e.g. an adapter on Whisper
    taps, _ = model.model.encode_audio(batch["input_features"])
    assert all(tap.requires_grad for tap in taps)


# ----------------------------------------------------------------------------- LoRA, resume


def test_lora_with_bf16_and_checkpointing_trains_only_adapters_and_connector(llm_dir, whisper_dir, audio_dir, tmp_path):
    import datasets
    from trl import ModelConfig

    from desta_audio.training import (
        DestaScriptArguments,
        build_trainer,
        freeze_for_sft,
        lora_config,
        save_final_model,
    )

    model, processor = small_model(llm_dir, whisper_dir)
    freeze_for_sft(model)
    before = snapshot(model)
    rows = [sft_record(f"r{i}", name, f"Answer {i}.") for i, name in enumerate(["hello.wav", "tone.wav"] * 2)]
    trainer = build_trainer(
        model,
        processor,
        sft_args(
            output_dir=str(tmp_path / "lora"),
            max_steps=3,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            save_strategy="no",
            bf16=True,
            use_cpu=True,
            activation_checkpointing=True,  # TRL's defaults: autocast and checkpointing (with PEFT's input-grad hook)
        ),
        DestaScriptArguments(audio_root=str(audio_dir)),
        datasets.Dataset.from_list(rows),
        peft_config=lora_config(ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)),
    )
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".connector.modules_to_save." in n for n in trainable), trainable
    assert any("language_model" in n and "lora_" in n for n in trainable)
    assert not any("audio_tower" in n for n in trainable)
    trainer.train()
    output = save_final_model(trainer)

    merged = DestaForConditionalGeneration.from_pretrained(output)
    moved = changed(before, merged.state_dict())
    lora_targets = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
    assert any(name.startswith("model.connector.") for name in moved)
    assert any(name.startswith("model.language_model.") for name in moved)
    unexpected = [
        n
        for n in moved
        if not (
            n.startswith("model.connector.") or (n.startswith("model.language_model.") and n.endswith(lora_targets))
        )
    ]
    assert not unexpected, unexpected
    assert (output / "lora_adapter" / "adapter_config.json").exists()


@pytest.mark.compat
def test_resume_continues_at_the_checkpoint_step(llm_dir, whisper_dir, audio_dir, tmp_path):
    import datasets
    from transformers import TrainerCallback

    from desta_audio.training import (
        DestaScriptArguments,
        build_trainer,
        freeze_for_sft,
        resume_target,
    )

    class StepsSeen(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    rows = datasets.Dataset.from_list([sft_record(f"r{i}", "hello.wav", f"Answer {i}.") for i in range(8)])
    script_args = DestaScriptArguments(audio_root=str(audio_dir))

    def trainer_for(max_steps, callback=None):
        model, processor = small_model(llm_dir, whisper_dir)
        args = sft_args(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2, save_steps=2)
        return build_trainer(
            freeze_for_sft(model), processor, args, script_args, rows, callbacks=[callback] if callback else None
        )

    trainer_for(2).train()
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").exists()
    seen = StepsSeen()
    resumed = trainer_for(4, seen)
    resumed.train(resume_from_checkpoint=resume_target("true"))
    assert seen.steps == [2, 3] and resumed.state.global_step == 4
    assert (tmp_path / "checkpoint-4").exists()


def test_output_dir_holding_a_model_is_not_overwritten(saved_model_dir, tmp_path):
    from desta_audio.training import check_output_dir

    with pytest.raises(
        ValueError, match=r"already holds a model \(config.json, model.safetensors\).*--overwrite_output_dir"
    ):
        check_output_dir(saved_model_dir, resuming=False, overwrite=False)
    check_output_dir(saved_model_dir, resuming=False, overwrite=True)
    check_output_dir(saved_model_dir, resuming=True, overwrite=False)
    (tmp_path / "notes.txt").write_text("not a model")
    check_output_dir(tmp_path, resuming=False, overwrite=False)


def test_resume_skips_an_incomplete_checkpoint(tmp_path, caplog):
    from desta_audio.training import resume_target

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # torn while saving
    with caplog.at_level(logging.WARNING):
        assert resume_target("true", tmp_path) == str(tmp_path / "checkpoint-2")
    assert sum("incomplete checkpoint" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resume_target(str(tmp_path / "checkpoint-6"), tmp_path)
    assert resume_target("false", tmp_path) is None


def test_seed_makes_the_fresh_connector_reproducible(llm_dir, whisper_dir):
    from trl import ModelConfig

    from desta_audio.training import load_model_and_processor

    args = script_arguments(
        llm=str(llm_dir),
        whisper=str(whisper_dir),
        num_audio_queries=4,
        qformer_num_hidden_layers=1,
        qformer_intermediate_size=64,
    )
    connectors = []
    for seed in (7, 7, 8):
        torch.manual_seed(1000 + len(connectors))  # whatever ran before must not matter
        model, _ = load_model_and_processor(args, ModelConfig(dtype="float32"), seed=seed)
        connectors.append(model.model.connector.state_dict())
    assert all(torch.equal(connectors[0][k], connectors[1][k]) for k in connectors[0])
    assert not all(torch.equal(connectors[0][k], connectors[2][k]) for k in connectors[0])


# ----------------------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, llm_dir, whisper_dir, audio_dir) -> Path:
    """train_sft.py on 2 CPU processes (gloo), reading a build_dataset.py-style folder of JSONL records.

    `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher ignores the count
    without an MPI hostfile); `--multi_gpu` goes through torchrun, and `--use_cpu true` keeps the ranks on CPU.
    """
    work = tmp_path_factory.mktemp("ddp")
    rows = [
        sft_record(f"r{i}", name, f"It is {kind}.")
        for i, (name, kind) in enumerate([("hello.wav", "speech"), ("tone.wav", "a tone")] * 4)
    ]
    write_jsonl(work / "data" / "records" / "shard-00000-of-00001.jsonl", rows)
    output = work / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--main_process_port", str(free_port()),
        "--mixed_precision", "no", "--dynamo_backend", "no", "train_sft.py", "--use_cpu", "true",
        "--llm", str(llm_dir), "--whisper", str(whisper_dir), *SMALL_CONNECTOR,
        "--dataset_name", str(work / "data"), "--audio_root", str(audio_dir),
        "--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--save_steps", "2", "--logging_steps", "1", *CPU_TRAINING,
    ]  # fmt: skip
    run(command, cwd=REPO_ROOT, timeout=180)
    return output


@pytest.mark.slow
def test_two_process_data_parallel_training_saves(ddp_run):
    state = json.loads((ddp_run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # 2 processes x 2 per device = 4 samples per step: 2 steps cover the 8 records once.
    assert state["log_history"][-1]["epoch"] == pytest.approx(1.0)
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "processor_config.json",
        "modeling_desta.py",
        "README.md",
    ):
        assert (ddp_run / name).exists(), name
    card = (ddp_run / "README.md").read_text()
    assert "pipeline_tag: audio-text-to-text" in card and "| steps | 2 |" in card


BLOCK_PROJECT = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_desta", "processing", "train_sft"):
                raise ImportError(f"{name} is blocked: only the saved folder's remote code may serve")
    sys.meta_path.insert(0, BlockProject())
    """
)


@pytest.mark.slow
def test_trained_folder_loads_with_remote_code_alone_and_generates(ddp_run, audio_dir, tmp_path):
    script = BLOCK_PROJECT + textwrap.dedent(
        f"""
        try:
            import modeling_desta
        except ImportError:
            pass
        else:
            raise SystemExit("the project is importable; this check would prove nothing")
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(ddp_run)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(ddp_run)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        conversation = [{{"role": "user", "content": [{{"type": "audio", "path": {str(audio_dir / "hello.wav")!r}}}, {{"type": "text", "text": "What?"}}]}}]
        inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert output.shape[1] > inputs["input_ids"].shape[1]
        print("generated", output.shape[1] - inputs["input_ids"].shape[1])
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(SUBPROCESS_ENV, PYTHONNOUSERSITE="1")
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "generated" in result.stdout


# ----------------------------------------------------------------------------- user errors of the script


def run_script(args: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """train_sft.py with `args`, whatever its exit code."""
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_sft.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, and the last stderr line is the script's one error line naming what to fix."""
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last.startswith("train_sft.py: error: ") and all(n in last for n in needles), result.stderr[-3000:]


def corrupt_checkpoint(output: Path) -> Path:
    """A checkpoint whose trainer state is whole but whose weights file was cut short (a full disk, a stopped copy)."""
    folder = output / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (folder / "model.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": ')
    return folder


def script_error_cases(tmp_path: Path, llm_dir: Path, whisper_dir: Path, audio_dir: Path) -> dict[str, tuple]:
    components = ["--llm", str(llm_dir), "--whisper", str(whisper_dir), *SMALL_CONNECTOR, *CPU_TRAINING]
    data = write_jsonl(tmp_path / "data.jsonl", [sft_record("r0", str(audio_dir / "tone.wav"), "A tone.")])
    bad = write_jsonl(tmp_path / "bad.jsonl", [sft_record("gone-0", str(tmp_path / "gone.wav"), "A tone.")])
    held = tmp_path / "held"
    held.mkdir()
    (held / "config.json").write_text("{}")
    resumed = tmp_path / "resumed"
    checkpoint = corrupt_checkpoint(resumed)
    return {
        "output dir holds a model": (
            [*components, "--data_files", str(data), "--output_dir", str(held)],
            ("--output_dir", "already holds a model", "--overwrite_output_dir"),
        ),
        "no dataset": ([*components, "--output_dir", str(tmp_path / "o1")], ("--dataset_name", "--data_files")),
        "bad record": (
            [*components, "--data_files", str(bad), "--output_dir", str(tmp_path / "o2"), "--max_steps", "1"],
            ("record 'gone-0'", "--on_bad_record skip"),
        ),
        "corrupt checkpoint": (
            [*components, "--data_files", str(data), "--output_dir", str(resumed)]
            + ["--resume_from_checkpoint", str(checkpoint)],
            ("--resume_from_checkpoint", "model.safetensors"),
        ),
    }


SCRIPT_ERROR_CASES = ["output dir holds a model", "no dataset", "bad record", "corrupt checkpoint"]


@pytest.mark.slow
@pytest.mark.parametrize("case", SCRIPT_ERROR_CASES)
def test_script_user_errors_are_one_line_without_traceback(case, llm_dir, whisper_dir, audio_dir, tmp_path):
    args, needles = script_error_cases(tmp_path, llm_dir, whisper_dir, audio_dir)[case]
    assert_one_line_error(run_script(args, cwd=tmp_path), *needles)


def run_in_process(args: list[str], capsys) -> tuple[int, str]:
    """train_sft.py's `run(args)` in this process (fast: no model is loaded before these errors) and its last
    stderr line."""
    sys.path.insert(0, str(REPO_ROOT))
    import train_sft

    code = train_sft.run(args)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return code, (err.splitlines() or [""])[-1]


def broken_data(tmp_path: Path) -> Path:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": "r0"}\n{broken\n{"id": "r2"}\n')
    return path


@pytest.mark.parametrize(
    "model_flags, named",
    [
        (["--model_name_or_path", "ckpt", "--llm", "L"], ("--model_name_or_path ckpt", "--llm L", "not both")),
        (["--model_name_or_path", "ckpt", "--whisper", "W"], ("--model_name_or_path ckpt", "--whisper W", "not both")),
        (["--llm", "L"], ("--llm L", "--whisper")),
        (["--whisper", "W"], ("--whisper W", "--llm")),
        ([], ("--model_name_or_path", "--llm and --whisper")),
    ],
    ids=["checkpoint and llm", "checkpoint and whisper", "llm alone", "whisper alone", "no model"],
)
def test_model_source_is_checked_before_any_data_is_read(tmp_path, capsys, model_flags, named):
    args = [*model_flags, "--data_files", str(broken_data(tmp_path)), "--output_dir", str(tmp_path / "out")]
    code, last = run_in_process([*args, *CPU_TRAINING], capsys)
    assert code == 2 and last.startswith("train_sft.py: error: ") and all(n in last for n in named), last


@pytest.mark.skipif(is_torch_bf16_gpu_available(), reason="this GPU supports bf16")
def test_precision_is_checked_before_any_data_is_read(tmp_path, capsys):
    args = ["--llm", "L", "--whisper", "W", "--data_files", str(broken_data(tmp_path)), "--output_dir", str(tmp_path)]
    for precision in (["--bf16", "true"], ["--config", str(REPO_ROOT / "recipes" / "desta25_sft.yaml")]):
        code, last = run_in_process([*args, *precision, "--report_to", "none"], capsys)
        assert code == 2 and "--bf16 true" in last and "--bf16 false" in last, last


@pytest.mark.parametrize(
    "content", ["", "\n\n", '{"id": "r0", "torn'], ids=["empty file", "blank lines", "only a torn last line"]
)
def test_a_dataset_without_records_is_named(tmp_path, capsys, content):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    args = ["--llm", "L", "--whisper", "W", "--data_files", str(path), "--output_dir", str(tmp_path / "out")]
    code, last = run_in_process([*args, *CPU_TRAINING], capsys)
    assert code == 2 and f"--data_files {path}" in last and "no records" in last, last


def test_a_build_dataset_folder_without_records_is_named(tmp_path, capsys):
    """build_dataset.py skipped every row (all bad): its folder holds only empty record shards."""
    folder = tmp_path / "built"
    write_jsonl(folder / "records" / "shard-00000-of-00001.jsonl", [])
    args = ["--llm", "L", "--whisper", "W", "--dataset_name", str(folder), "--output_dir", str(tmp_path / "out")]
    code, last = run_in_process([*args, *CPU_TRAINING], capsys)
    assert code == 2 and f"--dataset_name {folder}" in last and "split 'train' has no records" in last, last


@pytest.mark.slow
def test_script_debug_shows_the_traceback(llm_dir, whisper_dir, tmp_path):
    args = ["--llm", str(llm_dir), "--whisper", str(whisper_dir), *CPU_TRAINING, "--output_dir", str(tmp_path / "o")]
    result = run_script([*args, "--debug"], cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "--dataset_name" in result.stderr


def test_precision_default_follows_the_device_and_is_logged(tmp_path, caplog):
    """No --bf16: bfloat16 where the GPU supports it, else float32, with one log line saying which and why."""
    from desta_audio.training import DestaSFTConfig

    with caplog.at_level(logging.INFO, logger="desta_audio.training.arguments"):
        args = DestaSFTConfig(output_dir=str(tmp_path), report_to="none")
    assert args.bf16 == is_torch_bf16_gpu_available()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision: ")]
    assert len(lines) == 1 and ("bfloat16" if args.bf16 else "float32") in lines[0], lines
    with caplog.at_level(logging.INFO, logger="desta_audio.training.arguments"):
        on_cpu = DestaSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert on_cpu.bf16 is False
    assert DestaSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=True).bf16  # asked for
    assert DestaSFTConfig(output_dir=str(tmp_path), report_to="none", fp16=True, use_cpu=True).bf16 is False


@pytest.mark.slow
@pytest.mark.skipif(is_torch_bf16_gpu_available(), reason="this GPU supports bf16")
def test_explicit_bf16_without_support_is_one_line(llm_dir, whisper_dir, tmp_path):
    args = ["--llm", str(llm_dir), "--whisper", str(whisper_dir), "--output_dir", str(tmp_path / "o"), "--bf16", "true"]
    assert_one_line_error(run_script(args, cwd=tmp_path), "--bf16 true", "--bf16 false")


@pytest.mark.slow
def test_script_on_cpu_without_precision_flags_picks_float32(llm_dir, whisper_dir, tmp_path):
    """TRL's default bf16=True used to end here in "Your setup doesn't support bf16/gpu"; now the run goes on (to the
    next error, no dataset) after logging the precision it chose."""
    if is_torch_bf16_gpu_available():
        pytest.skip("this GPU supports bf16")
    result = run_script(["--llm", str(llm_dir), "--whisper", str(whisper_dir), "--output_dir", str(tmp_path)], tmp_path)
    assert "precision: float32" in result.stderr, result.stderr[-3000:]
    assert_one_line_error(result, "--dataset_name")


# ----------------------------------------------------------------------------- QLoRA
def qlora_flags(checkpoint, data, output_dir) -> list[str]:
    return [
        "--model_name_or_path", str(checkpoint), "--data_files", str(data), "--output_dir", str(output_dir),
        "--load_in_4bit", "true", "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
        "--per_device_train_batch_size", "2", "--use_cpu", "true", "--save_steps", "1", *CPU_TRAINING,
    ]  # fmt: skip


@pytest.mark.slow
def test_qlora_trains_adapters_on_a_4bit_llm_resumes_and_loads_with_the_adapter(saved_model_dir, audio_dir, tmp_path):
    """--load_in_4bit --use_peft: LoRA wraps 4-bit LLM layers, the connector trains in float32, a stopped run
    resumes, and the saved adapter (with the connector) loads onto the 4-bit base for inference."""
    bnb = pytest.importorskip("bitsandbytes")
    import datasets
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import BitsAndBytesConfig
    from trl import ModelConfig

    sys.path.insert(0, str(REPO_ROOT))
    import train_sft
    from desta_audio.training import build_trainer, freeze_for_sft, load_model_and_processor, lora_config

    rows = [sft_record(f"r{i}", str(audio_dir / "tone.wav"), "A tone.") for i in range(4)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    model_args = ModelConfig(model_name_or_path=str(saved_model_dir), load_in_4bit=True, use_peft=True, lora_r=4)
    model, processor = load_model_and_processor(script_arguments(), model_args)
    freeze_for_sft(model)
    trainer = build_trainer(
        model, processor, sft_args(output_dir=str(tmp_path / "inspect"), use_cpu=True), script_arguments(),
        datasets.Dataset.from_list(rows), peft_config=lora_config(model_args),
    )  # fmt: skip
    lora_layers = [m for n, m in trainer.model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A")]
    assert lora_layers and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in lora_layers)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".connector.modules_to_save." in n for n in trainable)
    connector = trainer.model.base_model.model.model.connector.modules_to_save["default"]
    assert {p.dtype for p in connector.parameters()} == {torch.float32}

    output = tmp_path / "out"
    assert train_sft.run([*qlora_flags(saved_model_dir, data, output), "--max_steps", "1"]) == 0
    flags = [*qlora_flags(saved_model_dir, data, output), "--max_steps", "2", "--resume_from_checkpoint", "true"]
    assert train_sft.run(flags) == 0
    assert json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2

    base = DestaForConditionalGeneration.from_pretrained(
        saved_model_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    )
    tuned = PeftModel.from_pretrained(base, output / "lora_adapter")
    trained_connector = load_file(output / "lora_adapter" / "adapter_model.safetensors")
    assert any(".connector." in name for name in trained_connector)
    assert tuned.generate(input_ids=torch.tensor([[1, 5, 7]]), max_new_tokens=2, do_sample=False).shape == (1, 5)


def test_a_quantization_flag_that_cannot_be_honoured_is_an_error(saved_model_dir, llm_dir, whisper_dir):
    from trl import ModelConfig

    from desta_audio.training import load_model_and_processor

    cases = [
        (ModelConfig(model_name_or_path=str(saved_model_dir), load_in_4bit=True), "add --use_peft true"),
    ]
    for model_args, message in cases:
        with pytest.raises(ValueError, match=message):
            load_model_and_processor(script_arguments(), model_args)
    fresh = script_arguments(llm=str(llm_dir), whisper=str(whisper_dir))
    with pytest.raises(ValueError, match="pass --model_name_or_path DIR"):
        load_model_and_processor(fresh, ModelConfig(load_in_4bit=True, use_peft=True))
