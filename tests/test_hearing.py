"""The hearing probe preset (minimal groups, chance, the text oracle's prompt, the deaf control's silence, the
combined table) and `--mcq-scoring likelihood` (the same prompt as generation, aligned log-probabilities, the
choice a known-answer setup forces)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from desta_audio import testing as tiny_assets
from desta_audio.cli import main
from desta_audio.data.descriptions import seed_description
from desta_audio.evaluation import build_conversation, run_benchmark
from desta_audio.evaluation.benchmark import evaluate_preset
from desta_audio.evaluation.combine import combine_runs
from desta_audio.evaluation.data import EvalItem, load_records
from desta_audio.evaluation.hearing import (
    chance,
    clip_lengths,
    hearing_markdown,
    minimal_groups,
    pass_items,
    probe_items,
    score_pass,
)
from desta_audio.evaluation.likelihood import answer_logprobs, answer_text, choice_outputs
from desta_audio.lab import write_split
from desta_audio.serving.served_pipeline import ServedPipeline


def prediction(task, group, answer, prediction, choices) -> dict:
    return {
        "id": f"{task}/{group}/{answer}",
        "format": "mcq",
        "answer": answer,
        "prediction": prediction,
        "choices": choices,
        "categories": {"task": task},
        "extra": {"group": group},
    }


SEX, RATE = ["Male", "Female"], ["Slow", "Normal", "Fast"]
# twin-0 both right; twin-1 one answer for both (what a model that ignores the audio does); triplet-0 all right;
# triplet-1 two of three right; one sound question outside any group.
HAND_MADE = [
    prediction("sex", "twin-0", "Male", "The speaker is male.", SEX),
    prediction("sex", "twin-0", "Female", "Female", SEX),
    prediction("sex", "twin-1", "Male", "Female", SEX),
    prediction("sex", "twin-1", "Female", "Female", SEX),
    prediction("rate", "triplet-0", "Slow", "slow", RATE),
    prediction("rate", "triplet-0", "Normal", "It is normal.", RATE),
    prediction("rate", "triplet-0", "Fast", "fast", RATE),
    prediction("rate", "triplet-1", "Slow", "slow", RATE),
    prediction("rate", "triplet-1", "Normal", "normal", RATE),
    prediction("rate", "triplet-1", "Fast", "slow", RATE),
    prediction("sound", "", "Tone", "A tone.", ["Speech", "Tone", "Noise", "Silence"]),
]


def test_minimal_groups_need_every_clip_of_a_group_right():
    assert minimal_groups(HAND_MADE) == {
        "sex": {"groups": 2, "correct": 1, "accuracy": 50.0},
        "rate": {"groups": 2, "correct": 1, "accuracy": 50.0},
    }
    one_answer = [{**r, "prediction": r["choices"][0]} for r in HAND_MADE]  # deaf: the same answer for every clip
    assert {task: m["correct"] for task, m in minimal_groups(one_answer).items()} == {"sex": 0, "rate": 0}


def test_chance_per_task_and_per_group():
    assert chance(HAND_MADE) == {
        "tasks": {"sex": 50.0, "rate": 33.33, "sound": 25.0},
        "minimal_groups": {"sex": 25.0, "rate": 3.7},
    }


def test_the_combined_table(tmp_path):
    paths = []
    for name, records in (("audio", HAND_MADE), ("text-oracle", HAND_MADE[:4]), ("deaf", HAND_MADE[2:])):
        folder = tmp_path / name
        folder.mkdir()
        results = {**score_pass(records), "benchmark": "hearing", "source": "probe.jsonl", "subset": name}
        (folder / "results.json").write_text(json.dumps(results))
        paths.append(folder / "results.json")
    combined = combine_runs("hearing", paths)
    table = combined["table"]
    assert table["sex"] == {"n": 4, "audio": 75.0, "text-oracle": 75.0, "deaf": 50.0, "chance": 50.0}
    assert table["rate"]["text-oracle"] is None and table["rate"]["audio"] == 83.33
    assert table["sex: both twins right"] == {"n": 2, "audio": 50.0, "text-oracle": 50.0, "deaf": 0.0, "chance": 25.0}
    markdown = hearing_markdown(combined)
    assert "| task | n | audio (%) | text-oracle (%) | deaf (%) | chance (%) |" in markdown
    assert "| rate | 6 | 83.33 | - | 83.33 | 33.33 |" in markdown
    with pytest.raises(ValueError, match="each hearing pass"):
        combine_runs("hearing", [paths[0], paths[0]])


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if not tiny_assets.tools_available():
        pytest.skip("needs espeak-ng and sox")
    root = tmp_path_factory.mktemp("lab")
    write_split(root, "probe", 20, seed=0)
    return root / "probe" / "probe.jsonl"


@pytest.fixture(scope="module")
def items(probe):
    return probe_items(load_records(probe), None, probe.parent)


def test_deaf_control_feeds_silence_of_the_same_length(items, tiny_pipe):
    lengths = clip_lengths(items)
    deaf = pass_items(items, "deaf", lengths)
    assert [d.id for d in deaf] == [i.id for i in items]
    for original, silent in zip(items, deaf):
        conversation = build_conversation(silent, "mcq")
        _, _, waveforms = tiny_pipe.processor.read_chat_audio(conversation)
        heard = tiny_pipe.processor.load_audio(original.audio)
        assert len(waveforms) == 1 and waveforms[0].shape == heard.shape
        assert not np.any(waveforms[0]) and (heard.any() or "silence" in original.id)


def test_text_oracle_asks_the_builders_description_without_audio(items, tiny_pipe):
    lengths = clip_lengths(items)
    oracle = pass_items(items, "text-oracle", lengths)
    twin = next(o for o, i in zip(oracle, items) if i.id == "sex/twin-0000-female")
    original = next(i for i in items if i.id == twin.id)
    description = seed_description(
        lengths[original.audio] / 16000, original.extra["transcript"], original.extra["attributes"]
    )
    assert "Gender: Female" in description and original.extra["transcript"] in description
    text, audio_items, waveforms = tiny_pipe.processor.read_chat_audio(build_conversation(twin, "mcq"))
    assert audio_items == [] and waveforms == []
    assert f"<start_audio>{description}<end_audio>\n\n{original.question} Choose from the following options:" in text
    assert 'The correct answer is: "___"' in text  # the same system prompt as the audio pass


def _rows_one_by_one(model, prompts, answers, embeds):
    """Each (prompt, answer) alone, unpadded, full logits: the reference the batched scorer must match."""
    scores = []
    for prompt, options, embed in zip(prompts, answers, embeds):
        item = []
        for answer in options:
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids, audio_embeds=embed).logits[0].float().log_softmax(-1)
            item.append(sum(logits[len(prompt) - 1 + k, token].item() for k, token in enumerate(answer)))
        scores.append(item)
    return scores


@torch.no_grad()
def test_option_log_likelihoods_are_aligned_with_unpadded_rows(items, tiny_pipe):
    batch = [items[0], items[-1]]  # a speech clip and a content question: different prompt and answer lengths
    prepared = [tiny_pipe.preprocess(build_conversation(item, "mcq", no_asr=True)) for item in batch]
    encoded, audio_embeds, _ = tiny_pipe.model_inputs(prepared)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    queries = audio_embeds.shape[0] // 2
    embeds = [audio_embeds[:queries], audio_embeds[queries:]]
    tokenizer = tiny_pipe.processor.tokenizer
    answers = [[tokenizer(answer_text(c), add_special_tokens=False).input_ids for c in i.choices] for i in batch]
    batched = answer_logprobs(tiny_pipe.model, tokenizer, prompts, answers, embeds)
    reference = _rows_one_by_one(tiny_pipe.model, prompts, answers, embeds)
    assert np.allclose(np.array(sum(batched, [])), np.array(sum(reference, [])), atol=1e-4)


def _favour(model, token_ids: list[int]):
    """A known answer: every position's logits for `token_ids` raised by 50."""

    def hook(module, args, output):
        output[..., token_ids] += 50.0
        return output

    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("forced", ["Male", "Female"])
def test_likelihood_picks_the_choice_a_known_answer_setup_forces(items, tiny_pipe, forced):
    item = next(i for i in items if i.id == "sex/twin-0000-female")
    tokenizer = tiny_pipe.processor.tokenizer
    male, female = (tokenizer(answer_text(c), add_special_tokens=False).input_ids for c in ("Male", "Female"))
    own = sorted(set(male) - set(female)) if forced == "Male" else sorted(set(female) - set(male))
    handle = _favour(tiny_pipe.model, own)  # the tokens only the forced answer has
    try:
        [output] = choice_outputs(tiny_pipe, [build_conversation(item, "mcq", no_asr=True)], [item.choices])
    finally:
        handle.remove()
    assert output["generated_text"] == f'The correct answer is: "{forced}"'
    assert output["choice_tokens"] == [len(male), len(female)]
    picked = output["choice_logprobs"][item.choices.index(forced)]
    assert picked == max(output["choice_logprobs"]) and output["transcripts"] == [""]


def test_likelihood_needs_choices_and_a_model_here(tiny_pipe, items, tmp_path, capsys):
    served = ServedPipeline("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ValueError, match="--base-url"):
        run_benchmark(served, items[:1], tmp_path / "a", mcq_scoring="likelihood")
    open_item = EvalItem(id="q", audio=items[0].audio, question="What is said?", answer="hello")
    with pytest.raises(ValueError, match="multiple-choice"):
        run_benchmark(tiny_pipe, [open_item], tmp_path / "b", fmt="open", mcq_scoring="likelihood")
    command = ["eval", "--benchmark", "hearing", "--model", "m", "--data-file", "x.jsonl", "--base-url", "http://h/v1"]
    assert main([*command, "--mcq-scoring", "likelihood"]) == 2
    assert "--mcq-scoring likelihood" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mcq_scoring", ["generate", "likelihood"])
def test_hearing_preset_runs_three_passes_into_one_table(tiny_parts, probe, tmp_path, mcq_scoring):
    model, processor = tiny_parts
    out = tmp_path / "hearing"
    combined = evaluate_preset(
        "hearing", model, out, processor=processor, data_file=probe, device="cpu", batch_size=8, no_asr=True,
        max_new_tokens=4, mcq_scoring=mcq_scoring,
    )  # fmt: skip
    assert combined["missing_passes"] == [] and set(combined["table"]) >= {"sex", "rate", "sex: both twins right"}
    assert json.loads((out / "results.json").read_text()) == combined
    records = {
        name: [json.loads(line) for line in (out / name / "predictions.jsonl").open()] for name in combined["passes"]
    }
    assert all(r["audio"] is None for r in records["text-oracle"] + records["deaf"])
    assert all(r["extra"]["control"] == "deaf" for r in records["deaf"])
    assert {r["id"] for r in records["audio"]} == {r["id"] for r in records["deaf"]}
    assert ("choice_logprobs" in records["audio"][0]) == (mcq_scoring == "likelihood")
    pass_results = json.loads((out / "deaf" / "results.json").read_text())
    assert pass_results["subset"] == "deaf" and "minimal_groups" in pass_results
    config = json.loads((out / "audio" / "run_config.json").read_text())
    assert config.get("mcq_scoring", "generate") == mcq_scoring
