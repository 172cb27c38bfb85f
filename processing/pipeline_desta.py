"""The `audio-text-to-text` pipeline: audio + a question (or whole chats) in, an answer and transcripts out.

Per batch the Whisper encoder runs once over every 30 s window of every clip. That single pass feeds the
connector and, for clips that came without a transcript, Whisper's decoder (speech recognition) as well;
windows Whisper judges speech-free get an empty transcript instead of a hallucinated one.
"""

import logging

import numpy as np
import torch
from transformers import GenerationConfig, Pipeline

from .audio_io import TARGET_SAMPLING_RATE
from .chat_text import audio_chat
from .compat_desta import pipeline_generate_kwargs

logger = logging.getLogger(__name__)

TASK = "audio-text-to-text"


class DestaAudioTextToTextPipeline(Pipeline):
    """
    ```python
    pipe = pipeline("audio-text-to-text", model="path/or/repo", trust_remote_code=True)
    pipe("clip.wav", prompt="What is said?")
    pipe([conversation_a, conversation_b], batch_size=2, max_new_tokens=64)
    ```
    Inputs: a path, URL, bytes, 16 kHz numpy array or `{"array", "sampling_rate"}` dict (with `prompt=`), or a
    chat whose content holds `{"type": "audio", ...}` items (each with an optional `"transcript"`); a list of
    them is batched. Output per input: `{"generated_text": str, "transcripts": [str per audio]}`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=256, do_sample=False)

    def _sanitize_parameters(
        self,
        prompt=None,
        system_prompt=None,
        no_speech_threshold=None,
        logprob_threshold=None,
        asr_max_new_tokens=None,
        generate_kwargs=None,
        audio_policy=None,
        **kwargs,
    ):
        preprocess_params = {}
        if audio_policy is not None:
            preprocess_params["audio_policy"] = audio_policy
        if prompt is not None:
            preprocess_params["prompt"] = prompt
        if system_prompt is not None:
            preprocess_params["system_prompt"] = system_prompt
        forward_params = {
            "generate_kwargs": {**(generate_kwargs or {}), **kwargs},
            # None: the model's speech/no-speech defaults (`transcription_desta`); logprob_threshold=-inf turns
            # that test off.
            "asr_options": {
                "no_speech_threshold": no_speech_threshold,
                "logprob_threshold": logprob_threshold,
                "max_new_tokens": asr_max_new_tokens,
            },
        }
        return preprocess_params, forward_params, {}

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        single = _is_single_input(inputs)
        items = [inputs] if single else list(inputs)
        batch_size = (self._batch_size or 1) if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        preprocess_params = {**self._preprocess_params, **preprocess_params}
        forward_params = _merge_forward_params(self._forward_params, forward_params)
        results = []
        for start in range(0, len(items), batch_size):
            prepared = [self.preprocess(item, **preprocess_params) for item in items[start : start + batch_size]]
            outputs = self.forward(prepared, **forward_params)
            results.extend(self.postprocess(output, **postprocess_params) for output in outputs)
        return results[0] if single else results

    def preprocess(
        self, inputs, prompt: str | None = None, system_prompt: str | None = None, audio_policy=None
    ) -> dict:
        conversation = inputs if _is_conversation(inputs) else _conversation_from_audio(inputs, prompt, system_prompt)
        text, audio_items, waveforms = self.processor.read_chat_audio(conversation, audio_policy=audio_policy)
        return {"text": text, "waveforms": waveforms, "transcripts": [item.get("transcript") for item in audio_items]}

    def _forward(self, batch: list[dict], generate_kwargs=None, asr_options: dict | None = None) -> list[dict]:
        encoded, audio_embeds, transcripts = self.model_inputs(batch, asr_options)
        generated = self.model.generate(
            **encoded, audio_embeds=audio_embeds, **pipeline_generate_kwargs(self, generate_kwargs or {})
        )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        outputs, offset = [], 0
        for row, item in enumerate(batch):
            count = len(item["waveforms"])
            outputs.append({"generated_ids": new_tokens[row], "transcripts": transcripts[offset : offset + count]})
            offset += count
        return outputs

    def model_inputs(
        self, batch: list[dict], asr_options: dict | None = None
    ) -> tuple[dict, torch.Tensor | None, list[str]]:
        """What the model is asked for a batch of `preprocess` outputs: the left-padded `input_ids` /
        `attention_mask` on the model's device, the connector's `audio_embeds` (None without audio) and every clip's
        transcript (given, or heard by Whisper on the same encoder pass). Generation and option scoring
        (`desta_audio.evaluation.likelihood`) both start here, so both see the same prompt."""
        waveforms = [waveform for item in batch for waveform in item["waveforms"]]
        transcripts = [transcript for item in batch for transcript in item["transcripts"]]
        audio_embeds, window_counts = None, []
        if waveforms:
            features, window_counts = self.processor.extract_features(waveforms)
            features = features.to(self.device, self.model.dtype)
            needs_asr = [transcript is None for transcript in transcripts]
            audio = self.model.get_audio_features(features, output_last_hidden_state=any(needs_asr))
            audio_embeds = audio.pooler_output
            if any(needs_asr):
                transcripts = self._fill_transcripts(
                    transcripts, waveforms, window_counts, audio.last_hidden_state, asr_options or {}
                )
        encoded = self.processor.encode_text([item["text"] for item in batch], window_counts, transcripts)
        self._warn_if_too_long(encoded["input_ids"].shape[1])
        return {key: value.to(self.device) for key, value in encoded.items()}, audio_embeds, transcripts

    def _warn_if_too_long(self, length: int) -> None:
        """A prompt (audio and transcripts included) longer than the LLM's positions gives garbage, not an error."""
        text_config = getattr(self.model.config, "text_config", None)
        limit = getattr(text_config, "max_position_embeddings", None)
        if limit and length > limit:
            logger.warning(
                "The prompt is %d tokens (audio placeholders and transcripts included), over the LLM's "
                "max_position_embeddings=%d; answers will be unreliable. Shorten the text or transcript, or set "
                "processor.max_transcript_tokens.",
                length,
                limit,
            )

    def _fill_transcripts(self, transcripts, waveforms, window_counts, encoder_states, asr_options: dict) -> list[str]:
        """Transcribe, from the encoder states already computed, every clip that came without a transcript."""
        if getattr(self.processor, "asr_tokenizer", None) is None:
            raise ValueError(
                "This checkpoint has no Whisper tokenizer (asr_tokenizer/), so it cannot transcribe; give every "
                "audio item a 'transcript' (an empty string for none)."
            )
        heard = self.model.transcribe_clips(
            encoder_states,
            waveforms,
            window_counts,
            self.processor.asr_tokenizer,
            self.processor.window_samples,
            wanted=[transcript is None for transcript in transcripts],
            **asr_options,
        )
        return [given if given is not None else text for given, text in zip(transcripts, heard)]

    def postprocess(self, output: dict) -> dict:
        text = self.processor.tokenizer.decode(output["generated_ids"], skip_special_tokens=True)
        return {"generated_text": text.strip(), "transcripts": output["transcripts"]}


def _merge_forward_params(defaults: dict, call: dict) -> dict:
    merged = {**defaults, **call}
    merged["generate_kwargs"] = {**defaults.get("generate_kwargs", {}), **call.get("generate_kwargs", {})}
    return merged


def _is_single_input(inputs) -> bool:
    """One chat or one clip; anything else iterable (a list, a generator, a `datasets` column) is a batch."""
    if _is_conversation(inputs) or _is_audio_value(inputs):
        return True
    return not hasattr(inputs, "__iter__")


def _is_audio_value(value) -> bool:
    return (
        isinstance(value, (str, bytes, dict, np.ndarray, torch.Tensor))
        or hasattr(value, "__fspath__")
        or hasattr(value, "get_all_samples")
    )


def _is_conversation(inputs) -> bool:
    """A list of messages: dicts with a role or content (a message missing one gets the processor's clear error)."""
    return (
        isinstance(inputs, (list, tuple))
        and bool(inputs)
        and isinstance(inputs[0], dict)
        and ("role" in inputs[0] or "content" in inputs[0])
    )


def _conversation_from_audio(audio, prompt: str | None, system_prompt: str | None) -> list[dict]:
    """The shorthand `pipe(audio, prompt=...)` as a chat (`audio_chat`): the audio, then the question; the system
    prompt is the processor's default unless `system_prompt` is given, as for `pipe(chat)`."""
    if isinstance(audio, dict) and "raw" in audio:
        audio = {"array": audio["raw"], "sampling_rate": audio.get("sampling_rate", TARGET_SAMPLING_RATE)}
    if isinstance(audio, dict) and "array" in audio:
        item = {
            "type": "audio",
            "array": audio["array"],
            "sampling_rate": audio.get("sampling_rate", TARGET_SAMPLING_RATE),
        }
    elif isinstance(audio, (np.ndarray, torch.Tensor)):
        item = {"type": "audio", "array": audio, "sampling_rate": TARGET_SAMPLING_RATE}
    elif isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        item = {"type": "audio", "path": audio}
    elif hasattr(audio, "get_all_samples") or (isinstance(audio, dict) and ("path" in audio or "bytes" in audio)):
        item = {"type": "audio", "audio": audio}
    else:
        shown = f"a dict with keys {sorted(audio)}" if isinstance(audio, dict) else type(audio).__name__
        raise ValueError(
            f"Cannot read {shown} as audio: pass a path, URL, bytes, a 16 kHz array, "
            "an {'array', 'sampling_rate'} dict, a datasets Audio value, or a chat with audio items."
        )
    return audio_chat([item], prompt, system_prompt)


def register_pipeline() -> None:
    """Make `pipeline("audio-text-to-text", model=<DestaForConditionalGeneration>)` work for pip users."""
    from transformers import AutoModelForCausalLM
    from transformers.pipelines import PIPELINE_REGISTRY

    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=DestaAudioTextToTextPipeline, pt_model=AutoModelForCausalLM, type="multimodal"
    )
