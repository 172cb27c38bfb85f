"""The connector's options for new models (off in the release): taps through Whisper's final layer norm, padding
masked out of the window, and queries that start from the clip. Each is checked against an independent computation.
"""

import numpy as np
import pytest
import torch

from modeling_desta import DestaConfig, DestaForConditionalGeneration
from modeling_desta.connector_desta import audio_position_mask, masked_mean
from modeling_desta.modeling_desta import encode_taps

OPTIONS = {"audio_tap_layer_norm": True, "qformer_mask_padding": True, "qformer_audio_queries": True}


def _variant(tiny_parts, **options) -> DestaForConditionalGeneration:
    """The tiny model with `options` set, every shared weight copied from it (the new modules keep their init)."""
    model = tiny_parts[0]
    config = DestaConfig(**{**model.config.to_dict(), **options})
    variant = DestaForConditionalGeneration(config)
    missing, unexpected = variant.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".audio_queries." in name for name in missing)
    return variant.eval()


def _features(processor, seconds: list[float]) -> torch.Tensor:
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for s in seconds]
    return processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features


def test_position_mask_keeps_the_clip_and_drops_the_padding(tiny_parts):
    features = _features(tiny_parts[1], [3.0, 12.5, 30.0])
    mask = audio_position_mask(features, 1500)
    # 50 positions a second; the last partly heard STFT frame may add one
    assert [int(n) for n in mask.sum(dim=1)] in ([150, 625, 1500], [151, 626, 1500])
    assert mask[0, :150].all() and not mask[0, 152:].any()


def test_a_window_of_digital_silence_keeps_every_position(tiny_parts):
    features = (
        tiny_parts[1]
        .feature_extractor([np.zeros(32000, dtype=np.float32)], sampling_rate=16000, return_tensors="pt")
        .input_features
    )
    assert audio_position_mask(features, 1500).all()


def test_masked_connector_equals_the_connector_on_the_heard_positions_alone(tiny_parts):
    """Masking the padding must give exactly what attending to (and averaging over) the clip's positions gives."""
    model = _variant(tiny_parts, qformer_mask_padding=True, qformer_audio_queries=True)
    features = _features(tiny_parts[1], [2.0, 7.0])
    encoder, connector = model.model.audio_encoder, model.model.connector
    with torch.no_grad():
        taps, _ = encode_taps(encoder, features, model.config.audio_layer_ids)
        masked = connector(taps, features)
        connector.mask_padding = False  # the same connector, unmasked, on the heard positions only
        heard = audio_position_mask(features, taps[0].shape[1])
        one_by_one = [connector([tap[i : i + 1, heard[i]] for tap in taps]) for i in range(len(features))]
    torch.testing.assert_close(masked, torch.cat(one_by_one), rtol=1e-5, atol=1e-5)


def test_masked_mean_is_the_mean_of_the_kept_positions():
    states = torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, False, False, False], [True, True, True, True, True]])
    torch.testing.assert_close(masked_mean(states, mask)[0], states[0, :2].mean(0))
    torch.testing.assert_close(masked_mean(states, mask)[1], states[1].mean(0))


def test_tap_layer_norm_taps_the_normed_states(tiny_parts):
    model = tiny_parts[0]
    features = _features(tiny_parts[1], [2.0])
    encoder, ids = model.model.audio_encoder, model.config.audio_layer_ids
    with torch.no_grad():
        raw, _ = encode_taps(encoder, features, ids)
        normed, _ = encode_taps(encoder, features, ids, tap_layer_norm=True)
    for raw_tap, normed_tap in zip(raw, normed):
        torch.testing.assert_close(normed_tap, encoder.layer_norm(raw_tap))


def test_options_change_the_audio_vectors_and_survive_save_and_load(tiny_parts, tmp_path):
    model = _variant(tiny_parts, **OPTIONS)
    features = _features(tiny_parts[1], [2.0])
    with torch.no_grad():
        plain = tiny_parts[0].get_audio_features(features).pooler_output
        optioned = model.get_audio_features(features).pooler_output
    assert not torch.allclose(plain, optioned)
    model.save_pretrained(tmp_path)
    loaded = DestaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert {name: getattr(loaded.config, name) for name in OPTIONS} == OPTIONS
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_audio_features(features).pooler_output, optioned)


def test_a_masking_connector_without_features_names_what_it_needs(tiny_parts):
    model = _variant(tiny_parts, qformer_mask_padding=True)
    taps = [torch.zeros(1, 1500, model.config.audio_config.d_model)] * len(model.config.audio_layer_ids)
    with pytest.raises(ValueError, match=r"qformer_mask_padding=True.*connector\(taps, input_features\)"):
        model.model.connector(taps)
