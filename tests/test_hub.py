"""Converting the released checkpoint format, rendering the model card, and publishing (offline, with a fake Hub)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS
from safetensors.torch import load_file, save_file
from transformers import BertConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers.models.bert.modeling_bert import BertEncoder

from desta_audio.cli import main as cli_main
from desta_audio.hub import ReleaseFormatError
from desta_audio.hub import publishing as publish_module
from desta_audio.hub.card import check_model_card, render_model_card
from desta_audio.hub.convert import RELEASE_FACTS, convert
from desta_audio.hub.publishing import PublishError, check_folder, publish, upload_file_list, verify_loads
from modeling_desta import DestaConfig, DestaForConditionalGeneration

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT_SIZE = 64
QFORMER_LAYERS = 6
NUM_TAPS = 4  # the tiny Whisper has 4 encoder layers: the reference's whisper-tiny taps [0, 1, 2, 3]
BERT_INTERMEDIATE = 3072  # BertConfig() default, which the reference keeps
LLM_ID, WHISPER_ID = "DeSTA-ntu/Llama-3.1-8B-Instruct", "openai/whisper-large-v3"
PLACEHOLDER = "<|reserved_special_token_87|>"


# ---------------------------------------------------------------------------------------------- fixtures
def reference_state_dict(d_model: int, llm_hidden: int, num_heads: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under exactly the names the reference's `state_dict()` gives its trainable parameters.

    The Q-Former names come from transformers' own `BertEncoder` built as the reference builds it, so a naming
    drift on our side cannot hide. Values are random (not the init) so softmax mixing and LayerNorms matter.
    """
    generator = torch.Generator().manual_seed(seed)
    bert = BertConfig(
        hidden_size=d_model,
        num_attention_heads=num_heads,
        num_hidden_layers=QFORMER_LAYERS,
        is_decoder=True,
        add_cross_attention=True,
    )
    shapes = {f"qformer.{name}": tensor.shape for name, tensor in BertEncoder(bert).state_dict().items()}
    shapes |= {f"layer_prompts.{i}": (1, PROMPT_SIZE, d_model) for i in range(NUM_TAPS)}
    shapes |= {"layer_weights": (PROMPT_SIZE, NUM_TAPS), "proj.0.weight": (d_model,), "proj.0.bias": (d_model,)}
    shapes |= {"proj.1.weight": (llm_hidden, d_model), "proj.1.bias": (llm_hidden,)}
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if name.endswith(("LayerNorm.weight", "proj.0.weight")):
            noise = 1.0 + 0.1 * noise
        elif len(shape) == 2 and name != "layer_weights":
            noise = noise / math.sqrt(shape[1])
        elif len(shape) == 1:
            noise = 0.1 * noise
        state[f"perception.connector.{name}"] = noise.contiguous()
    return state


def write_reference_checkpoint(folder: Path, state: dict, llm_dir: Path, whisper_dir: Path) -> Path:
    """A folder laid out like the release: connector-only safetensors and the reference's config fields."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors")
    config = {
        "architectures": ["DeSTA25AudioModel"],
        "model_type": "desta25",
        "llm_model_id": str(llm_dir),
        "encoder_model_id": str(whisper_dir),
        "connector_mode": "qformer_1",
        "qformer_num_hidden_layers": QFORMER_LAYERS,
        "prompt_size": PROMPT_SIZE,
        "use_lora": False,
        "audio_locator": "<|AUDIO|>",
        "placeholder_token": PLACEHOLDER,
        "info": "Desta2.5 Audio",
        "transformers_version": "4.51.3",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def reference_state(whisper_dir, llm_dir) -> dict[str, torch.Tensor]:
    whisper_config = json.loads((whisper_dir / "config.json").read_text())
    llm_config = json.loads((llm_dir / "config.json").read_text())
    return reference_state_dict(
        whisper_config["d_model"], llm_config["hidden_size"], whisper_config["encoder_attention_heads"]
    )


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, reference_state, llm_dir, whisper_dir) -> Path:
    return write_reference_checkpoint(tmp_path_factory.mktemp("reference"), reference_state, llm_dir, whisper_dir)


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, reference_dir) -> Path:
    return convert(reference_dir, tmp_path_factory.mktemp("converted"), dtype=torch.float32)


def card_facts(**overrides) -> dict:
    return {**RELEASE_FACTS, "repo_id": "someone/desta25-test", "base_models": [LLM_ID, WHISPER_ID], **overrides}


# ---------------------------------------------------------------------------------------------- reference math
def reference_taps(whisper: WhisperForConditionalGeneration, features: torch.Tensor, tap_ids) -> list[torch.Tensor]:
    """The reference's `forward_whisper` loop: convs, positions, encoder layers one by one, no final layer norm."""
    encoder = whisper.model.encoder
    hidden = F.gelu(encoder.conv1(features))
    hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: encoder.config.max_source_positions]
    taps = []
    for index, layer in enumerate(encoder.layers):
        hidden = layer(hidden, None)
        if index in tap_ids:
            taps.append(hidden)
    return taps


def bert_attention(states, context, weights, block: str, num_heads: int, eps: float = 1e-12):
    """BERT eager attention without a mask (as the reference calls it) + post-LN residual output."""
    batch, length, width = states.shape
    head_dim = width // num_heads

    def project(name, source):
        out = F.linear(source, weights(f"{block}.self.{name}.weight"), weights(f"{block}.self.{name}.bias"))
        return out.view(batch, -1, num_heads, head_dim).transpose(1, 2)

    query, key, value = project("query", states), project("key", context), project("value", context)
    probs = (query @ key.transpose(-1, -2) / math.sqrt(head_dim)).softmax(dim=-1)
    merged = (probs @ value).transpose(1, 2).reshape(batch, length, width)
    dense = F.linear(merged, weights(f"{block}.output.dense.weight"), weights(f"{block}.output.dense.bias"))
    return F.layer_norm(
        dense + states,
        (width,),
        weights(f"{block}.output.LayerNorm.weight"),
        weights(f"{block}.output.LayerNorm.bias"),
        eps,
    )


def reference_connector(state: dict, taps: list[torch.Tensor], num_heads: int) -> torch.Tensor:
    """The reference's connector from the raw checkpoint tensors: per-tap Q-Former, softmax mix, LayerNorm+Linear."""
    prefix = "perception.connector."
    width = taps[0].shape[-1]
    per_tap = []
    for tap_index, audio in enumerate(taps):
        queries = state[f"{prefix}layer_prompts.{tap_index}"].expand(audio.shape[0], -1, -1)
        for layer in range(QFORMER_LAYERS):

            def weights(name, layer=layer):
                return state[f"{prefix}qformer.layer.{layer}.{name}"]

            queries = bert_attention(queries, queries, weights, "attention", num_heads)
            queries = bert_attention(queries, audio, weights, "crossattention", num_heads)
            hidden = F.gelu(F.linear(queries, weights("intermediate.dense.weight"), weights("intermediate.dense.bias")))
            hidden = F.linear(hidden, weights("output.dense.weight"), weights("output.dense.bias"))
            queries = F.layer_norm(
                hidden + queries, (width,), weights("output.LayerNorm.weight"), weights("output.LayerNorm.bias"), 1e-12
            )
        per_tap.append(queries)
    stacked = torch.stack(per_tap, dim=2)  # (batch, queries, taps, width)
    mix = state[f"{prefix}layer_weights"].softmax(dim=-1).unsqueeze(-1)
    mixed = (stacked * mix).sum(dim=2)
    normed = F.layer_norm(mixed, (width,), state[f"{prefix}proj.0.weight"], state[f"{prefix}proj.0.bias"], 1e-5)
    return F.linear(normed, state[f"{prefix}proj.1.weight"], state[f"{prefix}proj.1.bias"])


# ---------------------------------------------------------------------------------------------- conversion
def test_converted_connector_equals_reference_math(converted_dir, reference_state, whisper_dir):
    rate = 16000
    clips = [
        (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32),
        np.random.default_rng(0).normal(0, 0.1, 5 * rate).astype(np.float32),
    ]
    features = WhisperFeatureExtractor(feature_size=80)(clips, sampling_rate=rate, return_tensors="pt").input_features
    model = DestaForConditionalGeneration.from_pretrained(converted_dir).eval()
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    assert model.config.audio_layer_ids == [0, 1, 2, 3]
    with torch.no_grad():
        ours = model.get_audio_features(features).pooler_output.view(len(clips), PROMPT_SIZE, -1)
        taps = reference_taps(whisper, features, model.config.audio_layer_ids)
        expected = reference_connector(reference_state, taps, whisper.config.encoder_attention_heads)
    max_diff = (ours - expected).abs().max().item()
    assert max_diff < 1e-5, max_diff
    assert expected.std() > 0.1  # a real signal, not two near-zero tensors agreeing


def test_converted_folder_carries_reference_settings(converted_dir, llm_dir, whisper_dir):
    config = DestaConfig.from_pretrained(converted_dir)
    processor_config = json.loads((converted_dir / "processor_config.json").read_text())
    assert (config.num_audio_queries, config.qformer_num_hidden_layers, config.qformer_intermediate_size) == (
        PROMPT_SIZE,
        QFORMER_LAYERS,
        BERT_INTERMEDIATE,
    )
    assert (config.qformer_layer_norm_eps, config.projector_layer_norm_eps) == (1e-12, 1e-5)
    assert processor_config["audio_token"] == PLACEHOLDER
    assert (processor_config["audio_start_text"], processor_config["audio_end_text"]) == (
        "<start_audio>",
        "<end_audio>",
    )
    assert processor_config["default_system_prompt"] == "Focus on the audio clips and instructions."
    assert config.text_config._name_or_path == str(llm_dir)
    assert config.audio_config._name_or_path == str(whisper_dir)


def edit_checkpoint(reference_dir: Path, target: Path, edit) -> Path:
    shutil.copytree(reference_dir, target)
    state = load_file(target / "model.safetensors")
    edit(state)
    save_file(state, target / "model.safetensors")
    return target


@pytest.mark.parametrize(
    "edit, named",
    [
        (
            lambda s: s.pop("perception.connector.qformer.layer.3.crossattention.output.LayerNorm.bias"),
            "model.connector.qformer.layer.3.crossattention.output.LayerNorm.bias",
        ),
        (
            lambda s: s.update({"perception.connector.qformer.layer.6.output.dense.bias": torch.zeros(64)}),
            "perception.connector.qformer.layer.6.output.dense.bias",
        ),
        (
            lambda s: s.update({"llm_model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(4, 64)}),
            "llm_model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        ),
        (
            lambda s: s.update({"perception.connector.layer_weights": torch.zeros(PROMPT_SIZE, 3)}),
            "perception.connector.layer_weights (64, 3)",
        ),
    ],
    ids=["missing", "extra-layer", "foreign-key", "shape"],
)
def test_key_mismatch_fails_naming_the_key(tmp_path, reference_dir, edit, named):
    broken = edit_checkpoint(reference_dir, tmp_path / "broken", edit)
    with pytest.raises(ReleaseFormatError, match=re.escape(named)):
        convert(broken, tmp_path / "out", dtype=torch.float32)
    assert not (tmp_path / "out").exists()


def pickled_release(reference_dir: Path, target: Path, name: str) -> Path:
    """The release with its weights saved as a pickle (`torch.save`), as some copies of it are shared."""
    shutil.copytree(reference_dir, target)
    torch.save(load_file(target / "model.safetensors"), target / name)
    (target / "model.safetensors").unlink()
    return target


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_convert_reads_only_safetensors_weights_and_says_how_to_convert_a_pickle(tmp_path, reference_dir, name):
    release = pickled_release(reference_dir, tmp_path / "pickled", name)
    with pytest.raises(ReleaseFormatError) as caught:
        convert(release, tmp_path / "out", dtype=torch.float32)
    message = str(caught.value)
    assert message.startswith(f"{release} holds its weights as a pickle ({name})") and "can run code" in message
    assert "weights_only=True" in message and not (tmp_path / "out").exists()
    command = re.search(r'python -c "(.*?)"', message).group(1)
    subprocess.run([sys.executable, "-c", command], check=True, timeout=120)  # the fix it names works
    assert convert(release, tmp_path / "out", dtype=torch.float32) == tmp_path / "out"


def test_convert_names_a_facts_file_that_is_not_utf8(tmp_path, reference_dir, capsys):
    facts = tmp_path / "facts.yaml"
    facts.write_text("license: other\n", encoding="utf-16")
    argv = ["convert", "--checkpoint", str(reference_dir), "--output", str(tmp_path / "out"), "--facts", str(facts)]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.startswith(f"desta-audio: error: {facts} is UTF-16 text, not UTF-8; save it as")


def test_convert_of_a_desta_checkpoint_says_it_needs_none(tmp_path, converted_dir, capsys):
    argv = ["convert", "--checkpoint", str(converted_dir), "--output", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"desta-audio: error: {converted_dir} is already a DeSTA checkpoint"), error
    assert "needs no conversion" in error and "from_pretrained" in error and "publish" in error, error
    assert not (tmp_path / "out").exists()


def test_cli_writes_checkpoint_and_card_from_facts_file(tmp_path, reference_dir):
    facts_file = tmp_path / "facts.yaml"
    facts_file.write_text(yaml.safe_dump({key: value for key, value in card_facts().items() if key != "repo_id"}))
    output = tmp_path / "out"
    cli_main(
        [
            "convert",
            "--checkpoint",
            str(reference_dir),
            "--output",
            str(output),
            "--dtype",
            "float32",
            "--facts",
            str(facts_file),
        ]
    )
    check_folder(output)
    assert str(output) in (output / "README.md").read_text()  # usage snippets point at the folder when not pushing


# ---------------------------------------------------------------------------------------------- model card
def test_model_card_front_matter_and_no_placeholders(converted_dir):
    config = DestaConfig.from_pretrained(converted_dir)
    config.text_config._name_or_path, config.audio_config._name_or_path = LLM_ID, WHISPER_ID  # as for the release
    facts = {key: value for key, value in card_facts().items() if key != "base_models"}
    card = render_model_card(config, facts)
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["base_model"] == [LLM_ID, WHISPER_ID]
    assert (metadata["library_name"], metadata["pipeline_tag"]) == ("transformers", "audio-text-to-text")
    assert metadata["datasets"] == ["DeSTA-ntu/DeSTA-AQA5M-FROM-Llama3.1-8B-Instruct"]
    assert {"audio", "desta", "custom_code"} <= set(metadata["tags"])
    assert metadata["license"] == "llama3.1"
    assert not re.search(r"\{\{|\{%|\{#", card)
    assert 'pipeline("audio-text-to-text", model="someone/desta25-test", trust_remote_code=True)' in card
    assert "| MMAU v05.15.25 test-mini, average | accuracy (%) | 66.00 |" in card
    assert "2507.02768" in card and "desta-audio chat clip.wav" in card


@pytest.mark.parametrize(
    "facts, named",
    [
        (card_facts(training={"steps": 10}), "training.loss"),
        ({k: v for k, v in card_facts().items() if k != "license"}, "license"),
        (card_facts(base_models=None), "not Hub ids"),  # the converted config names local folders
    ],
    ids=["no-loss", "no-license", "local-base-models"],
)
def test_model_card_refuses_missing_facts(converted_dir, facts, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        render_model_card(DestaConfig.from_pretrained(converted_dir), facts)


@pytest.mark.parametrize(
    "facts, named",
    [
        (card_facts(evaluation="70.1 on MMAU"), "facts['evaluation'] must be a mapping ({'source': ..., 'results'"),
        (card_facts(training=["steps: 10"]), "facts['training'] must be a mapping; got a list"),
        (card_facts(datasets="DeSTA-ntu/DeSTA-AQA5M"), "facts['datasets'] must be a list of strings; got a str"),
        (card_facts(evaluation={"source": "ours", "results": {"MMAU": 70}}), "facts['evaluation']['results'] must"),
        (card_facts(evaluation={"source": "ours", "results": ["MMAU 70"]}), "['results'] must be a list of mappings"),
        ("license: other", "The model card facts must be a mapping of fields; got a str"),
    ],
    ids=["evaluation-string", "training-list", "datasets-string", "results-mapping", "result-string", "facts-string"],
)
def test_publish_names_a_fact_of_the_wrong_type(tmp_path, converted_dir, monkeypatch, facts, named):
    monkeypatch.setattr(publish_module, "upload", lambda *args, **kwargs: pytest.fail("uploaded with bad facts"))
    folder = shutil.copytree(converted_dir, tmp_path / "model")
    with pytest.raises(ValueError) as caught:
        publish(folder, "someone/desta25-test", facts=facts)
    assert named in str(caught.value), caught.value
    with pytest.raises(ValueError, match=re.escape(named)):
        convert(converted_dir, tmp_path / "out", facts=facts)  # refused before anything is loaded


# ---------------------------------------------------------------------------------------------- publishing
EXPECTED_BASE_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "configuration_desta.py",
    "modeling_desta.py",
    "processing_desta.py",
    "audio_io.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


@pytest.mark.slow
def test_published_folder_loads_and_generates_in_clean_process(tmp_path, converted_dir):
    folder = shutil.copytree(converted_dir, tmp_path / "published")
    (folder / "README.md").write_text(render_model_card(DestaConfig.from_pretrained(folder), card_facts()))
    check_folder(folder)
    report = verify_loads(folder, new_tokens=3)
    assert report["new_tokens"] == 3
    assert report["model_class"] == "DestaForConditionalGeneration"
    assert report["model_module"].startswith("transformers_modules.")  # the folder's code, not the project's
    assert report["processor_class"] == "DestaProcessor"
    if (REPO_ROOT / "processing" / "pipeline_desta.py").exists():
        assert "audio-text-to-text" in json.loads((folder / "config.json").read_text())["custom_pipelines"]
        assert report["pipeline_answered"], report


def test_check_folder_names_missing_code_and_weights(tmp_path, converted_dir):
    folder = shutil.copytree(converted_dir, tmp_path / "broken")
    (folder / "audio_io.py").unlink()
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    (folder / "helper.py").write_text("from modeling_desta import DestaConfig\nfrom . import audio_io\n")
    with pytest.raises(PublishError) as error:
        check_folder(folder)
    message = str(error.value)
    assert "processing_desta.py imports .audio_io but audio_io.py is missing" in message
    assert "pytorch_model.bin is a pickle" in message and "No weights" in message
    assert "helper.py imports the project package 'modeling_desta'" in message
    assert "helper.py: 'from . import ...'" in message
    assert "README.md is missing" in message


class FakeHub:
    """Records calls; `upload_folder` selects files exactly as huggingface_hub does, without any network."""

    def __init__(self, monkeypatch):
        self.calls = []
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(
            api, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None, **kwargs
        ):
            ignore = [*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]
            additions = api._prepare_upload_folder_additions(
                folder_path, path_in_repo or "", allow_patterns=allow_patterns, ignore_patterns=ignore
            )
            fake.calls.append(("upload_folder", repo_id, sorted(op.path_in_repo for op in additions)))

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(HfApi, "_validate_yaml", lambda api, content, **kwargs: check_model_card(content))
        monkeypatch.setattr(
            publish_module, "verify_loads", lambda folder, **kwargs: fake.calls.append(("verify_loads", Path(folder)))
        )


def test_publish_uploads_exact_file_list_after_verifying(tmp_path, monkeypatch, converted_dir):
    from processing import DestaProcessor

    fake_hub = FakeHub(monkeypatch)
    model = DestaForConditionalGeneration.from_pretrained(converted_dir)
    processor = DestaProcessor.from_pretrained(converted_dir)
    work_dir = tmp_path / "work"
    litter = ["__pycache__/modeling_desta.cpython-311.pyc", ".git/HEAD", ".cache/huggingface/upload/x.lock"]
    for name in litter:
        (work_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (work_dir / name).write_text("litter")

    sent = publish(
        model, "someone/desta25-test", processor=processor, facts=card_facts(), max_shard_size="5MB", work_dir=work_dir
    )

    written = {path.relative_to(work_dir).as_posix() for path in work_dir.rglob("*") if path.is_file()}
    expected = sorted(written - set(litter))
    shards = set(json.loads((work_dir / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 1 and shards <= set(expected)
    assert EXPECTED_BASE_FILES <= set(expected)
    assert [name for name, *_ in fake_hub.calls] == ["verify_loads", "create_repo", "upload_folder"]
    assert fake_hub.calls[2] == ("upload_folder", "someone/desta25-test", expected)
    assert sent == expected == upload_file_list(work_dir)
    assert "someone/desta25-test" in (work_dir / "README.md").read_text()


def test_publish_uploads_known_kinds_and_never_writes_the_users_folder(saved_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(saved_model_dir, folder)
    (folder / ".env").write_text("HF_TOKEN=hf_secret")
    (folder / "notes.docx").write_bytes(b"private")
    (folder / ".secrets").mkdir()
    (folder / ".secrets" / "key.json").write_text("{}")
    (folder / "README.md").write_text("---\nlicense: other\n---\n# My own card\n")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    sent = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: None)
    monkeypatch.setattr(
        HfApi, "upload_folder", lambda api, *, folder_path, allow_patterns, **kwargs: sent.update(files=allow_patterns)
    )
    monkeypatch.setattr(publish_module, "verify_loads", lambda folder, **kwargs: {})
    monkeypatch.setattr(publish_module, "check_folder", lambda folder: None)
    from processing import DestaProcessor

    publish_module.publish(folder, "someone/model", processor=DestaProcessor.from_pretrained(saved_model_dir), facts={})
    assert not any(name.startswith(".") or "/." in name for name in sent["files"])
    assert "notes.docx" not in sent["files"] and "README.md" in sent["files"] and "model.safetensors" in sent["files"]
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before


def _checkpoint_folder(tmp_path: Path, converted_dir: Path) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(converted_dir, folder)
    return folder


def test_only_checkpoint_files_are_uploaded_never_strays(tmp_path, converted_dir):
    folder = _checkpoint_folder(tmp_path, converted_dir)
    before = upload_file_list(folder)
    strays = ["credentials.json", "notes.txt", "logs/run.log", "wandb/run-1/config.yaml", "checkpoint-500/config.json"]
    for name in strays:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    (folder / "asr_tokenizer").mkdir(exist_ok=True)
    (folder / "asr_tokenizer" / "tokenizer_config.json").write_text("{}")
    after = upload_file_list(folder)
    assert not set(strays) & set(after)
    assert set(after) == set(before) | {"asr_tokenizer/tokenizer_config.json"}


def test_a_link_to_a_file_outside_the_folder_is_refused(tmp_path, converted_dir):
    folder = _checkpoint_folder(tmp_path, converted_dir)
    secret = tmp_path / "elsewhere" / "token.txt"
    secret.parent.mkdir()
    secret.write_text("hf_secret")
    (folder / "added_tokens.json").symlink_to(secret)
    with pytest.raises(PublishError, match=r"added_tokens.json link\(s\) to files outside the folder"):
        upload_file_list(folder)


@pytest.mark.parametrize(
    ("index", "named"),
    [
        ({"metadata": {}}, "has no weight_map"),
        ({"weight_map": {"lm_head.weight": "../outside.safetensors"}}, "names '../outside.safetensors', not a shard"),
    ],
)
def test_a_bad_safetensors_index_is_named_not_a_crash(tmp_path, converted_dir, index, named):
    folder = _checkpoint_folder(tmp_path, converted_dir)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(PublishError, match=named):
        check_folder(folder)
