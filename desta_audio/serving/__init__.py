"""Serving DeSTA outside `pipeline()`: the vLLM plugin.

- `vllm_plugin`: what the `vllm.general_plugins` entry point runs in every vLLM process (registration only).
- `vllm_model`: the model vLLM runs (Whisper taps + connector in `embed_multimodal`, vLLM's own LLM) and its
  multimodal processor (30 s windows, transcripts, placeholder expansion).
- `vllm_renderer`: OpenAI chat messages to prompt ids through `DestaProcessor`, so a served chat tokenises exactly as
  `pipeline()` tokenises it.
- `openai_content`: OpenAI content parts (`input_audio`, `audio_url`) as DeSTA audio items.
- `frontend_asr`: the checkpoint's Whisper in the API-server process, for requests that bring no transcript.
"""
