"""The small real DeSTA: real pretrained parts built offline from PyPI packages (Whisper tiny.en, SmolLM2-135M-Instruct)."""
