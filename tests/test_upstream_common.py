"""transformers' own common tests, run on DeSTA: `ModelTesterMixin` (+ `ConfigTester`) on
`DestaForConditionalGeneration` and `ProcessorTesterMixin` on `DestaProcessor`, with tiny offline components.

The mixins come from the transformers sdist of the installed version, unpacked by the install step
`python -m desta_audio.testing.upstream_tests` (see `desta_audio/testing/upstream_tests.py`); without it this
module skips. Nothing here uses the network: the few upstream tests that fetch files are skipped, saying so.
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

import pytest

from desta_audio.testing.upstream_tests import (
    INSTALL_COMMAND,
    PACKAGE_NAME,
    is_complete,
    transformers_version,
    upstream_tests_dir,
)

# transformers' own suites: thorough and slow, left out of the quick loop `pytest -m "not slow"`.
pytestmark = pytest.mark.slow
UPSTREAM_DIR = upstream_tests_dir()
if not is_complete(UPSTREAM_DIR):
    pytest.skip(
        f"transformers {transformers_version()}'s own common tests are not installed in {UPSTREAM_DIR}; "
        f"run `{INSTALL_COMMAND}` (the install step) once.",
        allow_module_level=True,
    )
pytest.importorskip("parameterized", reason="transformers' common test mixins need `parameterized` (pip install)")
if str(UPSTREAM_DIR) not in sys.path:
    sys.path.insert(0, str(UPSTREAM_DIR))

import torch  # noqa: E402
from transformers import WhisperFeatureExtractor  # noqa: E402

from desta_audio.testing import AUDIO_TOKEN, build_tokenizer  # noqa: E402
from modeling_desta import DestaConfig, DestaForConditionalGeneration  # noqa: E402
from processing import DestaProcessor  # noqa: E402

# Imported plainly: an installed folder whose mixins no longer import (a new transformers needing another stand-in)
# must fail here, not skip.
upstream_modeling = importlib.import_module(f"{PACKAGE_NAME}.test_modeling_common")
upstream_processing = importlib.import_module(f"{PACKAGE_NAME}.test_processing_common")
upstream_configuration = importlib.import_module(f"{PACKAGE_NAME}.test_configuration_common")
upstream_generation = importlib.import_module(f"{PACKAGE_NAME}.generation.test_utils")

ModelTesterMixin = upstream_modeling.ModelTesterMixin
ProcessorTesterMixin = upstream_processing.ProcessorTesterMixin
ConfigTester = upstream_configuration.ConfigTester
# The sdist does not ship tests/generation/: this is the empty stand-in (no generate() tests run here; the
# project's own tests cover generation). Inheriting it is what `test_generation_tester_mixin_inheritance` asks
# of a model that can generate.
GenerationTesterMixin = upstream_generation.GenerationTesterMixin

# Upstream tests that download their inputs (MODALITY_INPUT_DATA URLs via `url_to_local_path`): skipped offline.
NETWORK_BOUND_PROCESSOR_TESTS = {
    "test_apply_chat_template_audio": "downloads two audio clips from the Hub (MODALITY_INPUT_DATA['audio'])",
    "test_chat_template_audio_sampling_rate": "downloads an audio clip from the Hub (MODALITY_INPUT_DATA['audio'])",
}


def register_as_causal_lm(module, model_class) -> None:
    """Let the upstream mixin treat `model_class` as the causal LM it is (it registers with
    `AutoModelForCausalLM`): the mixin recognises heads by name in transformers' built-in mappings, which list
    no remote-code model, so it would build no `labels` for `test_training*` and skip
    `test_causal_lm_loss_honors_shift_labels`. Only the upstream test module's own name is rebound; transformers'
    mapping is left untouched."""
    names = dict(module.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    names[DestaConfig.model_type] = model_class.__name__
    module.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES = names


def skip_network_bound(test_class, reasons: dict[str, str]) -> None:
    """Skip each listed upstream test (and its `parameterized` variants `<name>_<n>_...`) with its reason."""
    for attribute in dir(test_class):
        for name, reason in reasons.items():
            method = getattr(test_class, attribute)
            # `parameterized.expand` leaves `None` under the original name; only its variants are tests.
            if callable(method) and re.fullmatch(rf"{name}(_\d+(_\w*)?)?", attribute):
                setattr(test_class, attribute, unittest.skip(f"needs the network: {reason}")(method))


register_as_causal_lm(upstream_modeling, DestaForConditionalGeneration)


class DestaModelTester:
    """Tiny DeSTA configs and inputs for `ModelTesterMixin`: Whisper (80 mel bins, 30 s windows of 3000 frames),
    a one-layer Q-Former and a Llama; each row is BOS + `num_audio_queries` placeholders (one window) + text."""

    def __init__(self, parent, batch_size: int = 2, seq_length: int = 16, num_audio_queries: int = 8):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.num_audio_queries = num_audio_queries
        self.is_training = True
        # The LLM: what the mixin's hidden-state / attention / resize checks read.
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.audio_token_id = 0, 1, 2, 3
        self.text_config = {
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": 37,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 512,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
        }
        # Whisper: its encoder has as many layers as the LLM, which is what the mixin's audio-feature checks
        # expect (`_audio_features_get_expected_num_attentions` falls back to `num_hidden_layers`).
        self.num_mel_bins = 80
        self.feat_seq_length = 3000
        self.audio_config = {
            "model_type": "whisper",
            "vocab_size": 64,
            "num_mel_bins": self.num_mel_bins,
            "d_model": 16,
            "encoder_layers": self.num_hidden_layers,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "max_source_positions": self.feat_seq_length // 2,
            "max_target_positions": 16,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "decoder_start_token_id": 2,
            "begin_suppress_tokens": None,
        }

    def get_config(self) -> DestaConfig:
        return DestaConfig(
            audio_config=dict(self.audio_config),
            text_config=dict(self.text_config),
            num_audio_queries=self.num_audio_queries,
            qformer_num_hidden_layers=1,
            qformer_intermediate_size=32,
            audio_token_id=self.audio_token_id,
        )

    def input_ids(self) -> torch.Tensor:
        """BOS, then one window's placeholders, then text ids that are never special (ids 4 and up)."""
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(4, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        ids[:, 0] = self.bos_token_id
        ids[:, 1 : 1 + self.num_audio_queries] = self.audio_token_id
        return ids

    def input_features(self) -> torch.Tensor:
        """One padded 30 s window of log-mel-like features per row."""
        generator = torch.Generator().manual_seed(1)
        return torch.rand(self.batch_size, self.num_mel_bins, self.feat_seq_length, generator=generator)

    def prepare_config_and_inputs_for_common(self):
        input_ids = self.input_ids()
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "input_features": self.input_features(),
        }
        return self.get_config(), inputs


class DestaModelCommonTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """transformers' `ModelTesterMixin` on `DestaForConditionalGeneration`."""

    all_model_classes = (DestaForConditionalGeneration,)
    _is_composite = True
    # Whisper's decoder (kept for speech recognition) and its encoder's final layer norm (the taps are taken before
    # it) are not on the path of the language-model loss, by design; every other parameter is still checked to move.
    test_all_params_have_gradient = False

    def setUp(self):
        self.model_tester = DestaModelTester(self)
        self.config_tester = ConfigTester(self, config_class=DestaConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()


class DestaProcessorCommonTest(ProcessorTesterMixin, unittest.TestCase):
    """transformers' `ProcessorTesterMixin` on `DestaProcessor`, built with `from_components` from a tiny
    tokenizer (which has the Llama 3 audio token) and a Whisper feature extractor."""

    processor_class = DestaProcessor
    components_dir: str | None = None

    @staticmethod
    def prepare_processor_dict():
        # The audio token `from_components` picks for a Llama 3 tokenizer (as `DestaProcessor()` does), so that the mixin's `processor_class(**components, **prepare_processor_dict())` builds the same processor.
        # No default system prompt: the mixin's template tests render chats exactly as given (DeSTA's checkpoints
        # put the reference's system prompt first; that is tested in tests/test_pipeline.py).
        return {"num_audio_queries": 8, "audio_token": AUDIO_TOKEN, "default_system_prompt": None}

    @classmethod
    def _setup_from_components(cls):
        cls.components_dir = tempfile.mkdtemp()
        llm_dir, whisper_dir = Path(cls.components_dir, "llm"), Path(cls.components_dir, "whisper")
        build_tokenizer(llm_dir)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(whisper_dir)
        processor = DestaProcessor.from_components(llm_dir, whisper_dir, **cls.prepare_processor_dict())
        assert processor.audio_token == AUDIO_TOKEN
        return processor

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        if cls.components_dir:
            shutil.rmtree(cls.components_dir, ignore_errors=True)


skip_network_bound(DestaProcessorCommonTest, NETWORK_BOUND_PROCESSOR_TESTS)
