"""Training teaches a real small DeSTA to hear: the labels recipe on the lab's sex twins, from a fresh connector on
SmolLM2-135M-Instruct and Whisper tiny.en, through `train_sft.py` itself.

Held-out twins (other sentences and voices: the lab's probe split) are scored by the likelihood of the two label
answers. Twins share their sentence and transcript, so only the audio tells them apart: a model whose audio vectors
are misplaced, whose labels are shifted or whose connector is frozen cannot get both twins of a pair right, and the
deaf control (every clip replaced by silence of its length) must get none.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from desta_audio.lab.generate import make_lab
from desta_audio.lab.synth import tools_available
from desta_audio.small.smollm2 import cached_smollm2
from desta_audio.small.whisper_tiny_en import cached_whisper_tiny_en
from desta_audio.training.collator import DestaSFTCollator
from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor
from processing.audio_io import load_audio

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # 5 minutes on 2 idle cores, much longer beside other work
    pytest.mark.skipif(not tools_available(), reason="espeak-ng and sox make the lab's clips"),
]

# The small recipe (its connector options, learning rate and 24 steps of 8 clips) exactly as shipped.
REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "small_cpu.yaml"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SEXES = ("male", "female")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lab")
    make_lab(root, clips={"train": 300, "probe": 60})
    records = [json.loads(line) for line in (root / "train" / "labels.jsonl").read_text().splitlines()]
    twins = [r for r in records if r["task"] == "sex" and r["id"].startswith("twin-")]
    (root / "train" / "sex_twins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in twins))
    return root


def held_out_twins(lab: Path) -> list[dict]:
    """The probe's twin clips as labels records (the training answer form), pairs kept adjacent."""
    probe = [json.loads(line) for line in (lab / "probe" / "probe.jsonl").read_text().splitlines()]
    twins = sorted((item for item in probe if item["task"] == "sex"), key=lambda item: item["group"])
    train_record = json.loads((lab / "train" / "sex_twins.jsonl").read_text().splitlines()[0])
    records = []
    for item in twins:
        audio = {"type": "audio", "path": str(lab / "probe" / item["audio_id"]), "transcript": item["transcript"]}
        messages = [
            train_record["messages"][0],
            {"role": "user", "content": [audio, train_record["messages"][1]["content"][1]]},
        ]
        records.append({"id": item["id"], "messages": messages, "sex": item["answer"].lower(), "group": item["group"]})
    return records


def answer_losses(model, collator: DestaSFTCollator, records: list[dict], deaf: bool) -> torch.Tensor:
    """`(len(records), 2)`: the summed loss of "The speaker is male." and "... female." for each record."""
    losses = []
    for record in records:
        batch = collator([{**record, "response": f"The speaker is {sex}."} for sex in SEXES])
        if deaf:
            silent = [np.zeros_like(load_audio(record["messages"][1]["content"][0]["path"]))] * len(SEXES)
            batch["input_features"] = collator.processor.extract_features(silent)[0]
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], input_features=batch["input_features"]).logits
        labels = batch["labels"][:, 1:]
        token_losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        losses.append(token_losses.sum(dim=1))
    return torch.stack(losses)


def hearing_scores(losses: torch.Tensor, records: list[dict]) -> tuple[float, float]:
    right = [SEXES[int(row.argmin())] == record["sex"] for row, record in zip(losses, records)]
    pairs = {}
    for ok, record in zip(right, records):
        pairs.setdefault(record["group"], []).append(ok)
    return sum(right) / len(right), sum(all(group) for group in pairs.values()) / len(pairs)


def test_labels_recipe_learns_to_hear_the_speakers_sex(lab, tmp_path):
    llm, whisper = cached_smollm2(), cached_whisper_tiny_en()
    output = tmp_path / "run"
    command = [
        sys.executable, str(REPO_ROOT / "train_sft.py"), "--config", str(RECIPE), "--llm", str(llm),
        "--whisper", str(whisper), "--data_files", str(lab / "train" / "sex_twins.jsonl"),
        "--audio_root", str(lab / "train"), "--output_dir", str(output),
    ]  # fmt: skip
    # Both cores: the other subprocess tests pin one thread each, but this run is the suite's longest.
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    model = DestaForConditionalGeneration.from_pretrained(output).eval()
    processor = DestaProcessor.from_pretrained(output)
    collator = DestaSFTCollator(processor)
    records = held_out_twins(lab)
    assert len(records) >= 16 and len({r["group"] for r in records}) * 2 == len(records)

    accuracy, both_twins = hearing_scores(answer_losses(model, collator, records, deaf=False), records)
    deaf_accuracy, deaf_both_twins = hearing_scores(answer_losses(model, collator, records, deaf=True), records)
    # A model deaf to the clip gives both twins the same answer, so any pair it gets right proves hearing. Measured
    # on 2 cores: 18/22 clips and 7/11 pairs after these 24 steps (the 90 % needs a longer run).
    assert accuracy >= 0.7, (accuracy, both_twins)
    assert both_twins >= 0.5, (accuracy, both_twins)
    # Silence and the shared transcript give both twins the same input: one of each pair is wrong.
    assert deaf_both_twins == 0 and math.isclose(deaf_accuracy, 0.5), (deaf_accuracy, deaf_both_twins)
