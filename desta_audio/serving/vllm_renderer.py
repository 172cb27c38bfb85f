"""OpenAI chat messages to DeSTA prompts inside vLLM, through `DestaProcessor`.

vLLM's own renderer fills a chat template and tokenises the result, which would parse a special-token string
typed by a user (`<|eot_id|>`, the audio token) as the real token and would skip the processor's default system
prompt. This renderer (tokenizer mode `desta`, chosen by the plugin for DeSTA checkpoints) renders with the
processor instead: the same template, the same default system prompt, typed special tokens kept inert, one audio
token per clip. Audio is read here, under the server's source policy (`server_policy`), and checked against the
processor's per-request limits; the multimodal processor then expands each audio token (`vllm_model`). The prompt
ids therefore equal what `pipeline()` builds for the same chat.
"""

from vllm.renderers.hf import HfRenderer
from vllm.renderers.inputs.preprocess import parse_dec_only_prompt
from vllm.utils.async_utils import make_async

from processing.audio_io import TARGET_SAMPLING_RATE
from processing.chat_text import visible_text

from .openai_content import desta_conversation
from .server_policy import server_processor

# What a request may set in `mm_processor_kwargs` (vLLM lets requests set any only with --trust-request-mm-kwargs).
REQUEST_PROCESSOR_KWARGS = {"transcripts"}
# Keys of `get_apply_chat_template_kwargs()` that are about vLLM's tokenisation, not template variables.
NOT_TEMPLATE_VARIABLES = ("return_dict", "tokenize", "chat_template", "add_generation_prompt")


class DestaRenderer(HfRenderer):
    def __init__(self, config, tokenizer) -> None:
        super().__init__(config, tokenizer)
        self._render_desta_async = make_async(self.render_messages, executor=self._executor)

    def render_messages(self, messages, params):
        processor = server_processor(self.model_config.model)
        processor_kwargs = dict(params.mm_processor_kwargs or {})
        unknown = sorted(set(processor_kwargs) - REQUEST_PROCESSOR_KWARGS)
        if unknown:
            raise ValueError(
                f"mm_processor_kwargs {unknown} are not DeSTA's; it takes {sorted(REQUEST_PROCESSOR_KWARGS)}."
            )
        conversation = desta_conversation(messages, processor_kwargs.pop("transcripts", None))
        template_kwargs = params.get_apply_chat_template_kwargs()
        text, audio_items, waveforms = processor.read_chat_audio(
            conversation,
            add_generation_prompt=template_kwargs.get("add_generation_prompt", True),
            chat_template=template_kwargs.get("chat_template"),
            **{k: v for k, v in template_kwargs.items() if k not in NOT_TEMPLATE_VARIABLES and v is not None},
        )
        prompt = parse_dec_only_prompt(processor.tokenize_prompts([text], add_special_tokens=False)[0])
        if waveforms:
            prompt["multi_modal_data"] = {"audio": [(waveform, TARGET_SAMPLING_RATE) for waveform in waveforms]}
            transcripts = [item.get("transcript") for item in audio_items]
            prompt["mm_processor_kwargs"] = {**processor_kwargs, "transcripts": transcripts}
        return [_shown(message) for message in conversation], prompt

    async def render_messages_async(self, messages, params):
        return await self._render_with_timeout(self._render_desta_async(messages, params))


def _shown(message: dict) -> dict:
    """The message as vLLM logs and echoes it: its text, audio parts as `[audio]`."""
    content = message.get("content")
    if isinstance(content, list):
        content = "\n\n".join(
            visible_text(part.get("text") or "") if part.get("type") == "text" else "[audio]" for part in content
        )
    return {"role": message.get("role", ""), "content": content}
