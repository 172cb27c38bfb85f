"""DeSTA in vLLM: the model the worker runs and the multimodal processor that builds its prompts.

- The worker (`DestaForConditionalGeneration.embed_multimodal`) runs Whisper's encoder up to the connector's taps
  and the connector, once per audio item, with the very modules and code of `modeling_desta` (`encode_taps`,
  `DestaConnector`), so its vectors equal `get_audio_features(...).pooler_output`. The LLM is vLLM's own
  implementation of `text_config.architectures` (Llama by default; any causal LM vLLM supports).
- The processor (in the API-server process) splits each clip into 30 s windows, computes log-mel features, takes
  each clip's transcript from the request or transcribes it (`frontend_asr`), and expands the one audio token per
  clip into `num_audio_queries` placeholders per window followed by the transcript's ids, exactly as
  `DestaProcessor` does. Only the placeholders receive audio vectors; transcript tokens keep their embeddings.

Transcripts travel as `mm_processor_kwargs={"transcripts": [...]}` (one per clip in prompt order: a string, `""`
for none, or null to transcribe); without the key every clip is transcribed.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from modeling_desta.configuration_desta import DestaConfig
from modeling_desta.connector_desta import DestaConnector
from modeling_desta.modeling_desta import encode_taps
from processing import DestaProcessor
from processing.audio_io import TARGET_SAMPLING_RATE

from .frontend_asr import frontend_transcriber
from .server_policy import server_processor

# Checkpoint tensors (our `save_pretrained` names) -> this module's names. Whisper's decoder is not needed in the
# worker (transcripts are made by the API server), so its tensors are dropped before loading.
WEIGHT_PREFIXES = {
    "model.audio_tower.model.encoder.": "audio_encoder.",
    "model.connector.": "connector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}
UNUSED_PREFIXES = ("model.audio_tower.model.decoder.", "model.audio_tower.proj_out.")


class DestaProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> DestaConfig:
        return self.ctx.get_hf_config(DestaConfig)

    def get_hf_processor(self, **kwargs: object) -> DestaProcessor:
        return server_processor(self.ctx.model_config.model)

    def get_data_parser(self) -> MultiModalDataParser:
        return MultiModalDataParser(
            target_sr=TARGET_SAMPLING_RATE,
            target_channels=1,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": self.get_hf_processor().max_request_windows}


class DestaDummyInputsBuilder(BaseDummyInputsBuilder[DestaProcessingInfo]):
    """Profiling inputs: silent clips as long as one request may bring (silence is never sent to Whisper)."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().audio_token * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions):
        processor = self.info.get_hf_processor()
        count = mm_counts.get("audio", 0)
        share = max(count, 1)
        fitting = seq_len // (share * processor.num_audio_queries) - 1
        windows = max(1, min(processor.max_request_windows // share, fitting))
        length = windows * processor.window_samples
        return {"audio": self._get_dummy_audios(length=length, num_audios=count, overrides=mm_options.get("audio"))}


class DestaMultiModalProcessor(BaseMultiModalProcessor[DestaProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Features, window counts and transcript ids of the clips in `hf_data["audio"]`."""
        processor = self.info.get_hf_processor()
        waveforms = [np.asarray(clip, dtype=np.float32) for clip in hf_data.get("audio", [])]
        transcripts = checked_transcripts(hf_kwargs.get("transcripts"), len(waveforms))
        processor.check_audio_budget(waveforms)
        features, window_counts = processor.extract_features(waveforms)
        wanted = [transcript is None for transcript in transcripts]
        if any(wanted):
            transcriber = frontend_transcriber(self.info.ctx.model_config.model, processor.asr_tokenizer)
            heard = transcriber.transcribe(features, waveforms, window_counts, processor.window_samples, wanted)
            transcripts = [given if given is not None else text for given, text in zip(transcripts, heard)]
        transcript_ids = [processor.transcript_ids(transcript) for transcript in transcripts]
        return BatchFeature(
            {
                "input_features": features,
                "window_counts": torch.tensor(window_counts, dtype=torch.long),
                "transcript_ids": torch.tensor([i for ids in transcript_ids for i in ids], dtype=torch.long),
                "transcript_lengths": torch.tensor([len(ids) for ids in transcript_ids], dtype=torch.long),
            }
        )

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        empty = torch.zeros(0, dtype=torch.long)
        return {
            "input_features": MultiModalFieldConfig.flat_from_sizes("audio", hf_inputs.get("window_counts", empty)),
            "window_counts": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
            "transcript_ids": MultiModalFieldConfig.flat_from_sizes(
                "audio", hf_inputs.get("transcript_lengths", empty), keep_on_cpu=True
            ),
            "transcript_lengths": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        processor = self.info.get_hf_processor()
        audio_id = processor.audio_token_id
        items = out_mm_kwargs.get("audio", [])

        def expansion(item_index: int) -> PromptUpdateDetails:
            data = items[item_index].get_data()
            placeholders = [audio_id] * (processor.num_audio_queries * int(data["window_counts"]))
            return PromptUpdateDetails.select_token_id(placeholders + data["transcript_ids"].tolist(), audio_id)

        return [PromptReplacement(modality="audio", target=[audio_id], replacement=expansion)]

    def _get_cache_missing_processor_kwargs(self, inputs, mm_is_cached) -> Mapping[str, object]:
        """Only the transcripts of the clips that must be processed (the others come from the cache)."""
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        transcripts = kwargs.get("transcripts")
        if isinstance(transcripts, list):
            cached = mm_is_cached.get("audio", [])
            checked_transcripts(transcripts, len(cached))
            kwargs["transcripts"] = [t for t, is_cached in zip(transcripts, cached) if not is_cached]
        return kwargs


def checked_transcripts(transcripts, count: int) -> list:
    """One transcript per clip (None: transcribe it); absent means transcribe every clip."""
    if transcripts is None:
        return [None] * count
    if not isinstance(transcripts, (list, tuple)) or len(transcripts) != count:
        given = len(transcripts) if isinstance(transcripts, (list, tuple)) else type(transcripts).__name__
        raise ValueError(
            f"mm_processor_kwargs['transcripts'] must hold one entry per audio clip (a string, or null to "
            f"transcribe): got {given} for {count} clips."
        )
    bad = [t for t in transcripts if t is not None and not isinstance(t, str)]
    if bad:
        raise ValueError(f"Each transcript must be a string or null; got {type(bad[0]).__name__}.")
    return list(transcripts)


@MULTIMODAL_REGISTRY.register_processor(
    DestaMultiModalProcessor, info=DestaProcessingInfo, dummy_inputs=DestaDummyInputsBuilder
)
class DestaForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """DeSTA for vLLM: Whisper taps + connector for audio items, vLLM's own LLM for everything else."""

    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix=WEIGHT_PREFIXES)

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # Prompts are built by the plugin's renderer (`vllm_renderer`), which places the processor's audio token.
        if modality.startswith("audio"):
            return None
        raise ValueError("DeSTA takes audio only.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio_encoder = WhisperEncoder(config.audio_config)
            self.connector = DestaConnector(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=config.text_config.architectures or ["LlamaForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Each audio item's connector vectors, `(windows x num_audio_queries, hidden)`, items in order."""
        features = kwargs.get("input_features")
        if features is None:
            return []
        if isinstance(features, (list, tuple)):
            features = torch.cat(list(features))
        counts = [int(count) for count in torch.as_tensor(kwargs["window_counts"]).flatten()]
        with torch.no_grad():
            taps, _ = encode_taps(
                self.audio_encoder,
                features,
                self.config.audio_layer_ids,
                tap_layer_norm=self.config.audio_tap_layer_norm,
            )
            vectors = self.connector(taps, features)
        return tuple(chunk.flatten(0, 1) for chunk in vectors.split(counts))

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs: object):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        used = ((name, tensor) for name, tensor in weights if not name.startswith(UNUSED_PREFIXES))
        return AutoWeightsLoader(self).load_weights(used, mapper=self.hf_to_vllm_mapper)
