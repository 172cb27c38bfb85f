"""The connector's per-tap Q-Former passes give what one pass over all taps stacked into the batch gives.

The stacked pass is how the connector used to run (and how the release's numbers were produced); it is
recomputed here from the connector's own sub-modules, independently of `DestaConnector.forward`.
"""

import copy

import torch

from modeling_desta import DestaConfig, DestaForConditionalGeneration


def stacked_pass(connector, taps: list[torch.Tensor]) -> torch.Tensor:
    """All taps through the shared Q-Former in one batch of `num_taps * batch`, then mixed and projected."""
    batch = taps[0].shape[0]
    queries = torch.cat([prompt.expand(batch, -1, -1) for prompt in connector.layer_prompts])
    per_tap = connector.qformer(queries, torch.cat(taps)).unflatten(0, (len(taps), batch))
    weights = connector.mixing_weights().transpose(0, 1)[:, None, :, None]
    return connector.proj((per_tap * weights).sum(dim=0))


def _random_taps(connector, batch: int = 3, frames: int = 30, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = connector.layer_prompts[0].shape[-1]
    return [torch.randn(batch, frames, hidden, generator=generator) for _ in connector.layer_prompts]


def _with_trained_mixture(connector):
    """Non-uniform mixing weights, so a tap mixed with the wrong weight would show."""
    connector = copy.deepcopy(connector)
    with torch.no_grad():
        connector.layer_weights.copy_(
            torch.randn(connector.layer_weights.shape, generator=torch.Generator().manual_seed(1))
        )
    return connector


def test_eval_outputs_equal_the_stacked_pass(tiny_parts):
    connector = _with_trained_mixture(tiny_parts[0].model.connector).eval()
    taps = _random_taps(connector)
    with torch.no_grad():
        torch.testing.assert_close(connector(taps), stacked_pass(connector, taps), rtol=1e-5, atol=1e-5)


def _dropout_free_training_model(tiny_parts) -> DestaForConditionalGeneration:
    """The tiny model in training mode with every Q-Former dropout off (dropout draws differ between the paths)."""
    model = tiny_parts[0]
    config = DestaConfig(
        **{**model.config.to_dict(), "qformer_attention_dropout_prob": 0.0, "qformer_hidden_dropout_prob": 0.0}
    )
    trained = DestaForConditionalGeneration(config)
    trained.load_state_dict(model.state_dict())
    trained.model.connector = _with_trained_mixture(trained.model.connector)
    return trained.train()


def test_training_loss_and_gradients_equal_the_stacked_pass(tiny_parts):
    model = _dropout_free_training_model(tiny_parts)
    processor = tiny_parts[1]
    features, window_counts = processor.extract_features([torch.randn(16000 * 2).numpy() * 0.1] * 2)
    encoded = processor.encode_text(
        [f"{processor.audio_token} what is it?"] * 2, window_counts, ["some words", "other words here"]
    )
    labels = encoded["input_ids"].masked_fill(encoded["input_ids"] == processor.audio_token_id, -100)
    connector = model.model.connector

    def loss_and_grads(audio_embeds_from):
        model.zero_grad()
        with torch.no_grad():
            taps, _ = model.model.encode_audio(features)
        audio_embeds = audio_embeds_from(connector, taps).flatten(0, 1)
        loss = model(**encoded, audio_embeds=audio_embeds, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in connector.named_parameters()}

    loss, grads = loss_and_grads(lambda module, taps: module(taps))
    reference_loss, reference_grads = loss_and_grads(stacked_pass)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(grad.abs().sum() > 0 for grad in grads.values())
