"""What a served DeSTA reads: the checkpoint's processor with a server's audio source policy.

Requests come from strangers, so the processor starts from `AudioSourcePolicy.untrusted_defaults()` (no local
paths, no private or internal addresses, 50 MiB and 30 s per download) with public http(s) URLs allowed, as vLLM
itself allows `audio_url`. The operator (never a request) changes it with `DESTA_AUDIO_POLICY`, a JSON object of
`AudioSourcePolicy` settings, e.g. `{"allow_urls": false}` or `{"allow_paths": true, "path_root": "/srv/audio"}`.
"""

import functools
import json
import os

from processing import DestaProcessor

POLICY_VARIABLE = "DESTA_AUDIO_POLICY"
SERVER_DEFAULTS = {"allow_urls": True}


def server_audio_policy() -> dict:
    """The server's policy settings: the defaults above, updated with `DESTA_AUDIO_POLICY`."""
    raw = os.environ.get(POLICY_VARIABLE, "").strip()
    try:
        operator = json.loads(raw) if raw else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{POLICY_VARIABLE} must be a JSON object of audio policy settings: {error}") from None
    if not isinstance(operator, dict):
        raise ValueError(f"{POLICY_VARIABLE} must be a JSON object of audio policy settings; got {raw!r}.")
    return {**SERVER_DEFAULTS, **operator}


@functools.cache
def server_processor(path: str) -> DestaProcessor:
    """The checkpoint's processor, reading audio under the server policy (one per checkpoint and process)."""
    return DestaProcessor.from_pretrained(path, trusted_input=False, audio_policy=server_audio_policy())
