"""The connector of DeSTA2.5-Audio: learned queries per Whisper tap, one shared BERT-style Q-Former, a per-query
softmax over taps, and a LayerNorm + Linear projection to the LLM's width.

Parameter names follow the reference checkpoint's BERT layout (`qformer.layer.N.attention.self.query` ...), so
converting the release is a pure prefix rename.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_desta import DestaConfig


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention, `(batch, heads, length, head_dim)` in, `(batch, length, heads, head_dim)` out."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.dropout(weights.softmax(dim=-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class DestaQFormerAttention(nn.Module):
    """Multi-head attention without any mask: query self-attention is bidirectional, cross-attention sees every frame.

    The kernel comes from transformers' attention interface (`config._attn_implementation`: eager, sdpa, flash
    ...), so `model.set_attn_implementation(...)` switches it. `is_causal = False` is what those kernels read:
    without it sdpa and flash attention would treat the query self-attention as causal.
    """

    def __init__(self, config: DestaConfig):
        super().__init__()
        hidden_size = config.audio_config.d_model
        self.config = config
        self.num_heads = config.qformer_num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.dropout = config.qformer_attention_dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, key_value_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        query = self._split_heads(self.query(hidden_states))
        key = self._split_heads(self.key(key_value_states))
        value = self._split_heads(self.value(key_value_states))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        context, _ = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        batch, length = hidden_states.shape[:2]
        return context.reshape(batch, length, self.num_heads * self.head_dim)


class DestaQFormerResidualOutput(nn.Module):
    """Dense -> dropout -> add the residual -> LayerNorm (BERT's post-LN block)."""

    def __init__(self, config: DestaConfig, input_size: int):
        super().__init__()
        hidden_size = config.audio_config.d_model
        self.dense = nn.Linear(input_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=config.qformer_layer_norm_eps)
        self.dropout = nn.Dropout(config.qformer_hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class DestaQFormerAttentionBlock(nn.Module):
    def __init__(self, config: DestaConfig):
        super().__init__()
        self.self = DestaQFormerAttention(config)
        self.output = DestaQFormerResidualOutput(config, config.audio_config.d_model)

    def forward(
        self, hidden_states: torch.Tensor, key_value_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.output(self.self(hidden_states, key_value_states, attention_mask), hidden_states)


class DestaQFormerIntermediate(nn.Module):
    def __init__(self, config: DestaConfig):
        super().__init__()
        self.dense = nn.Linear(config.audio_config.d_model, config.qformer_intermediate_size)
        self.act = ACT2FN[config.qformer_hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden_states))


class DestaQFormerLayer(GradientCheckpointingLayer):
    """Query self-attention -> cross-attention to the audio states -> feed-forward, each post-LN."""

    def __init__(self, config: DestaConfig):
        super().__init__()
        self.attention = DestaQFormerAttentionBlock(config)
        self.crossattention = DestaQFormerAttentionBlock(config)
        self.intermediate = DestaQFormerIntermediate(config)
        self.output = DestaQFormerResidualOutput(config, config.qformer_intermediate_size)

    def forward(
        self, queries: torch.Tensor, audio_states: torch.Tensor, audio_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        queries = self.attention(queries, queries)
        queries = self.crossattention(queries, audio_states, audio_mask)
        return self.output(self.intermediate(queries), queries)


class DestaQFormer(nn.Module):
    def __init__(self, config: DestaConfig):
        super().__init__()
        self.layer = nn.ModuleList(DestaQFormerLayer(config) for _ in range(config.qformer_num_hidden_layers))

    def forward(
        self, queries: torch.Tensor, audio_states: torch.Tensor, audio_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layer:
            queries = layer(queries, audio_states, audio_mask)
        return queries


def audio_position_mask(input_features: torch.Tensor, num_positions: int) -> torch.Tensor:
    """`(num_windows, num_positions)`, True where an encoder position hears the clip, False where it only holds the
    zero padding of Whisper's 30 s window.

    Whisper's feature extractor floors every window's log-mel at its maximum minus 8 (log10 units), so padding
    frames hold exactly the window's minimum in every mel bin. A position (two mel frames, the encoder's stride)
    is padding when both of its frames are. A window with no such frame at all (digital silence) keeps every
    position, so its queries still have something to attend to.
    """
    floor = input_features.amin(dim=(1, 2), keepdim=True)
    heard_frames = (input_features > floor + 1e-5).any(dim=1)
    heard = heard_frames.view(heard_frames.shape[0], num_positions, -1).any(dim=-1)
    return heard | ~heard.any(dim=-1, keepdim=True)


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`(batch, hidden)`: the mean of `states` `(batch, positions, hidden)` over the positions `mask` keeps."""
    if mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1)


class DestaLayerPrompts(nn.ParameterList):
    """The learned queries of each tap, `(1, num_audio_queries, hidden)` each (state-dict keys `layer_prompts.N`).

    Read through `forward` rather than by index so that an offloaded connector (`device_map` with CPU or disk
    offload) gets them loaded: accelerate loads a module's weights when its `forward` runs, and a plain
    `ParameterList` has none (and refuses to be called, hence `nn.Module`'s call).
    """

    __call__ = nn.Module.__call__

    def forward(self, tap: int, batch: int) -> torch.Tensor:
        return self[tap].expand(batch, -1, -1)


class DestaConnector(nn.Module):
    """Turns the tapped Whisper states of each 30 s window into `num_audio_queries` LLM-sized vectors.

    One learned query set per tap goes through the *shared* Q-Former against that tap's states; the
    per-tap results are mixed with a separate softmax over taps for every query position; a LayerNorm and
    a Linear map the mixture to the LLM's hidden size.
    """

    def __init__(self, config: DestaConfig):
        super().__init__()
        hidden_size = config.audio_config.d_model
        num_taps = len(config.audio_layer_ids)
        self.layer_prompts = DestaLayerPrompts(
            nn.Parameter(torch.empty(1, config.num_audio_queries, hidden_size)) for _ in range(num_taps)
        )
        self.layer_weights = nn.Parameter(torch.zeros(config.num_audio_queries, num_taps))
        self.qformer = DestaQFormer(config)
        self.proj = nn.Sequential(
            nn.LayerNorm(hidden_size, eps=config.projector_layer_norm_eps),
            nn.Linear(hidden_size, config.text_config.hidden_size),
        )
        self.mask_padding = config.qformer_mask_padding
        self.audio_queries = (
            nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_taps))
            if config.qformer_audio_queries
            else None
        )

    def mixing_weights(self) -> torch.Tensor:
        """`(num_audio_queries, num_taps)`: each query's softmax over taps."""
        return self.layer_weights.softmax(dim=-1)

    def forward(self, tapped_states: list[torch.Tensor], input_features: torch.Tensor | None = None) -> torch.Tensor:
        """One Q-Former pass per tap, accumulated into the mixture as it goes.

        `input_features` (the Whisper features the taps came from) is needed only by a connector that masks the
        window's padding (`qformer_mask_padding`).

        Per-tap passes rather than one pass over all taps stacked into the batch: in training, attention dropout
        falls back to a path that materialises a `(batch, heads, queries, frames)` mask per call, which at
        `num_taps` times the size crosses the allocator's mmap threshold and is mapped and unmapped at every
        step; stacking also copied every tap once (`torch.cat`). See docs/performance.md for the measurements.
        """
        batch, num_positions = tapped_states[0].shape[:2]
        weights = self.mixing_weights()
        position_mask = self._position_mask(input_features, num_positions)
        attention_mask = None
        if position_mask is not None:
            dtype = self.layer_weights.dtype
            attention_mask = torch.zeros(position_mask.shape, dtype=dtype, device=position_mask.device)
            attention_mask = attention_mask.masked_fill(~position_mask, torch.finfo(dtype).min)[:, None, None, :]
        mixed = None
        for tap, states in enumerate(tapped_states):
            queries = self.layer_prompts(tap, batch)
            states = states.to(queries.dtype)
            if self.audio_queries is not None:
                queries = queries + self.audio_queries[tap](masked_mean(states, position_mask)).unsqueeze(1)
            per_tap = self.qformer(queries, states, attention_mask)
            weighted = per_tap * weights[:, tap, None].to(per_tap.dtype)
            mixed = weighted if mixed is None else mixed + weighted
        return self.proj(mixed)

    def _position_mask(self, input_features: torch.Tensor | None, num_positions: int) -> torch.Tensor | None:
        if not self.mask_padding:
            return None
        if input_features is None:
            raise ValueError(
                "This connector masks Whisper's padding (qformer_mask_padding=True), so it needs the input_features "
                "its taps came from: call connector(taps, input_features)."
            )
        return audio_position_mask(input_features, num_positions)
