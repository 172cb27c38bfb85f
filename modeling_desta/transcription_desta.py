"""Whisper's greedy short-form transcription of 30-second windows, without `generate`'s per-step overhead.

`WhisperForConditionalGeneration.generate` adds its own bookkeeping to every decode step (logits processors,
stopping criteria, output collection, input preparation; with its default processors a tiny.en step took 29 ms
on one CPU core against 19 ms for the forward pass alone), keeps finished windows in the batch, and keeps every
step's scores when asked for log-probabilities. `transcribe_windows` runs the same forward passes in a plain loop
and applies the same rules `generate` applies to a greedy, timestamp-free, single-window decode:

- the prompt: start-of-transcript, then (multilingual models) the language token (`generation_config.language`
  or, as `detect_language` does, the most probable language token at start-of-transcript) and the task token,
  then `<|notimestamps|>`;
- `suppress_tokens` at every step and `begin_suppress_tokens` at the first generated position, set to `-inf` on
  float32 logits;
- greedy argmax, stopping a window at `eos_token_id`; tokens after it are `pad_token_id`.

The no-speech probe (one decoder step at start-of-transcript, Whisper's own "is there speech" signal) is the
prompt's first step, so its cross-attention keys and values over every frame are computed once and reused; the
windows it judges speech-free are dropped before any decoding, and each window leaves the batch as soon as it
ends. Tokens equal `whisper.generate`'s (tested window by window against it).
"""

from dataclasses import dataclass

import torch
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from .compat_desta import cache_field

# The speech/no-speech rule (OpenAI's defaults): a window whose no-speech probability exceeds this is never decoded,
# and one whose decoded text has a mean token log-probability under `DEFAULT_LOGPROB_THRESHOLD` is blanked; tones and
# noise otherwise come out as hallucinated words such as "You" or "Beeping".
DEFAULT_NO_SPEECH_THRESHOLD = 0.6
DEFAULT_LOGPROB_THRESHOLD = -1.0
# A window this quiet (waveform RMS) is speech-free without asking Whisper.
SILENCE_RMS = 1e-4


@dataclass
class WindowTranscripts:
    """Greedy Whisper tokens per window, with the signals a caller needs to blank a window.

    tokens: (windows, steps) generated ids, `pad_token_id` after a window's end and for undecoded windows.
    mean_logprob: (windows,) mean log-probability of each window's generated tokens (pad and end excluded), each
        the `log_softmax` of that step's suppressed float32 logits; 0 for undecoded windows.
    no_speech_probability: (windows,) probability of Whisper's no-speech token at start-of-transcript.
    decoded: (windows,) whether the window was decoded (its no-speech probability was at most the threshold).
    """

    tokens: torch.LongTensor
    mean_logprob: torch.Tensor
    no_speech_probability: torch.Tensor
    decoded: torch.BoolTensor


@torch.no_grad()
def transcribe_clips(
    whisper: WhisperForConditionalGeneration,
    tokenizer,
    encoder_states: torch.Tensor,
    waveforms: list,
    window_counts: list[int],
    window_samples: int,
    wanted: list[bool] | None = None,
    no_speech_threshold: float | None = None,
    logprob_threshold: float | None = None,
    max_new_tokens: int | None = None,
) -> list[str | None]:
    """Each clip's transcript, from the encoder states of its 30 s windows (one row per window, clips in order), with
    the speech/no-speech rule: a window is speech-free (no text) when its waveform is silent (`SILENCE_RMS`), when
    its no-speech probability exceeds `no_speech_threshold` (then it is never decoded), or when its text's mean token
    log-probability is under `logprob_threshold` (`-inf` turns that test off). A clip's transcript is its windows'
    texts joined; clips not `wanted` get None. All windows are decoded in one batch by `transcribe_windows`.

    The one transcription path of the project: the pipeline (on the encoder pass that fed the connector) and the
    dataset builder's `--asr-model` (on a Whisper of its own) both call it.
    """
    wanted = [True] * len(waveforms) if wanted is None else list(wanted)
    spans = [(clip, index) for clip, count in enumerate(window_counts) for index in range(count)]
    windows = [w for w, (clip, _) in enumerate(spans) if wanted[clip]]
    audible = [w for w in windows if not _is_silent(waveforms[spans[w][0]], spans[w][1], window_samples)]
    texts = dict.fromkeys(windows, "")
    if audible:
        options = (no_speech_threshold, logprob_threshold, max_new_tokens)
        texts.update(zip(audible, _window_texts(whisper, tokenizer, encoder_states[audible], *options)))
    joined = [[] if wanted[clip] else None for clip in range(len(waveforms))]
    for w in windows:
        if texts[w]:
            joined[spans[w][0]].append(texts[w])
    return [None if parts is None else " ".join(parts) for parts in joined]


def _is_silent(waveform, index: int, window_samples: int) -> bool:
    samples = torch.as_tensor(waveform[index * window_samples : (index + 1) * window_samples], dtype=torch.float64)
    return samples.numel() == 0 or float(samples.square().mean().sqrt()) < SILENCE_RMS


def _window_texts(whisper, tokenizer, states, no_speech_threshold, logprob_threshold, max_new_tokens) -> list[str]:
    """Each window's text, blanked where Whisper itself says there is no speech."""
    no_speech_threshold = DEFAULT_NO_SPEECH_THRESHOLD if no_speech_threshold is None else no_speech_threshold
    logprob_threshold = DEFAULT_LOGPROB_THRESHOLD if logprob_threshold is None else logprob_threshold
    max_new_tokens = max_new_tokens or whisper.config.max_target_positions // 2
    result = transcribe_windows(whisper, states, max_new_tokens, no_speech_threshold)
    texts = tokenizer.batch_decode(result.tokens, skip_special_tokens=True)
    kept = [
        decoded and logprob >= logprob_threshold
        for decoded, logprob in zip(result.decoded.tolist(), result.mean_logprob.tolist())
    ]
    return [text.strip() if keep else "" for text, keep in zip(texts, kept)]


@torch.no_grad()
def transcribe_windows(
    whisper: WhisperForConditionalGeneration,
    encoder_states: torch.Tensor,
    max_new_tokens: int,
    no_speech_threshold: float | None = None,
) -> WindowTranscripts:
    """Greedy transcription of each window of `encoder_states` (Whisper encoder outputs, one row per window)."""
    config = whisper.generation_config
    _check_generation_config(config)
    num_windows = encoder_states.shape[0]
    device = encoder_states.device
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    start = torch.full((num_windows, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    start_logits = _next_token_logits(whisper, encoder_states, start, cache)
    no_speech = start_logits.softmax(dim=-1)[:, config.no_timestamps_token_id - 1]
    decoded = torch.ones(num_windows, dtype=torch.bool, device=device)
    if no_speech_threshold is not None:
        decoded = no_speech <= no_speech_threshold
    tokens = torch.full((num_windows, max_new_tokens), config.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(num_windows, max_new_tokens, device=device)
    prompt = _prompt_after_start(whisper, start_logits)
    _check_length(whisper, 1 + prompt.shape[1], max_new_tokens)
    rows = torch.nonzero(decoded).flatten()
    if rows.numel() and max_new_tokens > 0:
        if rows.numel() < num_windows:
            cache.batch_select_indices(rows)
        states = encoder_states[rows]
        logits = _next_token_logits(whisper, states, prompt[rows], cache)
        _greedy_loop(whisper, states, cache, logits, rows, tokens, logprobs)
    counted = tokens != config.pad_token_id
    mean_logprob = (logprobs * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)
    return WindowTranscripts(tokens, mean_logprob, no_speech, decoded)


def _greedy_loop(whisper, states, cache, logits, rows, tokens, logprobs) -> None:
    """Fill `tokens`/`logprobs` at `rows` step by step; a window leaves the batch (and the cache) when it ends."""
    config = whisper.generation_config
    always = token_mask(config.suppress_tokens, logits.shape[-1], logits.device)
    at_begin = always | token_mask(config.begin_suppress_tokens, logits.shape[-1], logits.device)
    for step in range(tokens.shape[1]):
        scores = logits.masked_fill(at_begin if step == 0 else always, -float("inf"))
        next_tokens = scores.argmax(dim=-1)
        tokens[rows, step] = next_tokens
        logprobs[rows, step] = scores.log_softmax(dim=-1).gather(1, next_tokens[:, None]).squeeze(1)
        going_on = next_tokens != config.eos_token_id
        remaining = int(going_on.sum())  # the step's one device-to-host sync
        if step + 1 == tokens.shape[1] or remaining == 0:
            return
        if remaining < len(going_on):
            keep = torch.nonzero(going_on).flatten()
            cache.batch_select_indices(keep)
            rows, states, next_tokens = rows[keep], states[keep], next_tokens[keep]
        logits = _next_token_logits(whisper, states, next_tokens[:, None], cache)


REQUIRED_GENERATION_FIELDS = ("decoder_start_token_id", "no_timestamps_token_id", "eos_token_id", "pad_token_id")


def _check_generation_config(config) -> None:
    missing = [name for name in REQUIRED_GENERATION_FIELDS if getattr(config, name, None) is None]
    if missing:
        raise ValueError(
            f"This Whisper's generation_config has no {', '.join(missing)}: transcribing needs the generation "
            "config of a Whisper checkpoint (its generation_config.json), not one derived from the model config."
        )


def _check_length(whisper, prompt_length: int, max_new_tokens: int) -> None:
    """`generate`'s own limit: the prompt and the new tokens must fit Whisper's decoder positions."""
    limit = whisper.config.max_target_positions
    if prompt_length + max_new_tokens > limit:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} plus the {prompt_length}-token Whisper prompt exceeds the decoder's "
            f"max_target_positions={limit}; ask for at most {limit - prompt_length} new tokens per window."
        )


def _next_token_logits(whisper, states, decoder_input_ids, cache) -> torch.Tensor:
    """Float32 logits of the next token (as `generate` takes them), extending `cache` with `decoder_input_ids`."""
    output = whisper(
        encoder_outputs=(states,), decoder_input_ids=decoder_input_ids, use_cache=True, **cache_field(cache)
    )
    return output.logits[:, -1].float()


def token_mask(token_ids, vocab_size: int, device=None) -> torch.Tensor:
    """A `(vocab_size,)` boolean mask, True at `token_ids` (none when `token_ids` is empty or None)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if token_ids:
        mask[torch.tensor(list(token_ids), dtype=torch.long, device=device)] = True
    return mask


def _prompt_after_start(whisper, start_logits: torch.Tensor) -> torch.LongTensor:
    """The prompt tokens after start-of-transcript, per window: [language] [task] <|notimestamps|>.

    Mirrors `WhisperGenerationMixin._retrieve_init_tokens` for a timestamp-free decode: the forced tokens when
    neither language nor task is configured; the configured language, else (multilingual models) the detected one
    when no language is forced; the configured task, else `transcribe` when a language was configured; then
    `<|notimestamps|>`.
    """
    config = whisper.generation_config
    task, language = getattr(config, "task", None), getattr(config, "language", None)
    if language is not None and not isinstance(language, str):
        raise ValueError(f"generation_config.language must be one language for every window, got {language!r}.")
    after_start = _forced_tokens(whisper) if task is None and language is None else []
    if language is not None:
        after_start = _with_language(after_start, _language_token_id(config, language))
    elif hasattr(config, "lang_to_id") and (not after_start or after_start[0] is None):
        after_start = _with_language(after_start, _detected_language(config, start_logits))
    task_ids = set(getattr(config, "task_to_id", {}).values())
    if task is not None:
        after_start.append(config.task_to_id[task])
    elif language is not None and task_ids and not task_ids.intersection(_fixed(after_start)):
        after_start.append(config.task_to_id["transcribe"])
    last = after_start[-1] if after_start else config.decoder_start_token_id
    if not isinstance(last, int) or last != config.no_timestamps_token_id:
        after_start.append(config.no_timestamps_token_id)
    num_windows, device = start_logits.shape[0], start_logits.device
    columns = [_column(token, num_windows, device) for token in after_start if token is not None]
    return torch.stack(columns, dim=1)


def _forced_tokens(whisper) -> list:
    """The legacy `forced_decoder_ids` after start-of-transcript (positions 1, 2, ... in a row), as `generate`
    reads them from the generation config or else the model config."""
    config = whisper.generation_config
    forced = getattr(config, "forced_decoder_ids", None) or getattr(whisper.config, "forced_decoder_ids", None)
    tokens = []
    for position, token in forced or []:
        if position != len(tokens) + 1:
            break
        tokens.append(token)
    return tokens


def _with_language(after_start: list, language) -> list:
    return [language, *after_start[1:]] if after_start else [language]


def _fixed(after_start: list) -> set[int]:
    return {token for token in after_start if isinstance(token, int)}


def _column(token, num_windows: int, device) -> torch.Tensor:
    if isinstance(token, torch.Tensor):
        return token
    return torch.full((num_windows,), token, dtype=torch.long, device=device)


def _detected_language(config, start_logits: torch.Tensor) -> torch.Tensor:
    """The most probable language token per window at start-of-transcript, as `detect_language` picks it."""
    language_ids = torch.tensor(sorted(config.lang_to_id.values()), device=start_logits.device)
    return language_ids[start_logits[:, language_ids].argmax(dim=-1)]


def _language_token_id(config, language: str) -> int:
    language = language.lower()
    for token in (language, f"<|{TO_LANGUAGE_CODE.get(language, language)}|>"):
        if token in config.lang_to_id:
            return config.lang_to_id[token]
    raise ValueError(f"Unsupported language {language!r}: not in this Whisper's generation_config.lang_to_id.")
