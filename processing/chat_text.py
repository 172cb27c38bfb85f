"""Chat messages as the processor reads them: plain messages are checked, message objects become dicts, loose kwargs
are split between the processor and the template, and the fences that keep special-token strings typed in message
text inert (tokenised as text: no forged turns, no injected audio placeholders) are defined."""

import dataclasses
import logging
import re

from transformers.utils.chat_template_utils import _get_template_variables

logger = logging.getLogger(__name__)

# The reference's system prompt in its examples: the processor's `default_system_prompt` (`from_components` and
# `from_release` set it), put first in every chat that has no system message.
DEFAULT_SYSTEM_PROMPT = "Focus on the audio clips and instructions."

# Private-use characters fencing special-token strings found in message text, so that they are tokenised as
# plain text (never as the template's control tokens or the audio placeholder). Stripped from user text first.
INERT_OPEN, INERT_CLOSE = "\ue000", "\ue001"
FENCED_SPAN = re.compile(f"({INERT_OPEN}[^{INERT_CLOSE}]*{INERT_CLOSE})")
ROLE_PATTERN = re.compile(r"[A-Za-z][\w-]{0,63}")


def visible_text(text: str) -> str:
    """Rendered text without the inert fences (what a reader should see)."""
    return text.replace(INERT_OPEN, "").replace(INERT_CLOSE, "")


# How a chat template reads message content as items rather than as one string: it loops over the content or
# indexes into it (vLLM's content-format detection asks the same question).
CONTENT_ITEM_ACCESS = re.compile(
    r"for\s+\w+\s+in\s+[\w.]*(\[\s*['\"]content['\"]\s*\]|\.content)"
    r"|(\[\s*['\"]content['\"]\s*\]|\.content)\s*\[\s*\d+\s*\]"
)


def template_reads_content_items(chat_template: str) -> bool:
    """Whether `chat_template` reads message content as a list of `{"type": ...}` items (else as a string)."""
    return bool(CONTENT_ITEM_ACCESS.search(chat_template))


# Deeper than any real chat (message -> content -> item -> value); a bound so that malformed input is an error,
# not a RecursionError.
MAX_CONTENT_DEPTH = 16


def checked_text(text: str, where: str) -> str:
    """`text` if it is valid Unicode text (a lone surrogate cannot be tokenised), else a ValueError naming `where`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} is not valid Unicode text: {error.reason} at position {error.start}; send UTF-8 text."
        ) from None
    return text


def checked_messages(conversation):
    """`conversation` (one chat or a batch), after checking its plain messages; message objects (dataclasses,
    pydantic models) are left to the mixin. Runs before the mixin drops None-valued keys, so `content: None`
    is named as such."""
    batched = isinstance(conversation, (list, tuple)) and bool(conversation)
    batched = batched and isinstance(conversation[0], (list, tuple))
    for chat in conversation if batched else [conversation]:
        if isinstance(chat, (list, tuple)) and not chat:
            raise ValueError("A conversation needs at least one message; got an empty list.")
        for index, message in enumerate(chat):
            if not (dataclasses.is_dataclass(message) or hasattr(message, "model_dump")):
                check_message(message, index)
    return conversation


def check_message(message, index: int) -> None:
    """One clear line for a malformed message: its index and what is wrong."""
    if not isinstance(message, dict):
        raise ValueError(f"Message {index} must be a dict with 'role' and 'content'; got {type(message).__name__}.")
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        raise ValueError(f"Message {index} has no {' or '.join(map(repr, missing))}; got keys {sorted(message)}.")
    role, content = message["role"], message["content"]
    if not isinstance(role, str) or not ROLE_PATTERN.fullmatch(role):
        raise ValueError(f"Message {index} has an invalid role {role!r}; use a plain name such as 'user'.")
    if not isinstance(content, (str, list, tuple)):
        raise ValueError(
            f"Message {index} ({role}) has content {content!r}; give a string or a list of "
            "{'type': 'text'|'audio', ...} items."
        )


def normalized_conversations(conversation) -> tuple[list[list[dict]], bool]:
    """(the chats as lists of plain dicts, whether a batch was given), as `ProcessorMixin.apply_chat_template` reads
    them: message objects (dataclasses, pydantic models, a chat with `.messages`) become dicts, keys whose value is
    None are dropped (APIs send `tool_calls: None`) and OpenAI `image_url` parts become HF `image` items."""
    batched = isinstance(conversation, (list, tuple)) and bool(conversation)
    batched = batched and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
    chats = conversation if batched else [conversation]
    normalized = []
    for chat in chats:
        messages = [_plain_message(message, 0) for message in getattr(chat, "messages", chat)]
        normalized.append([_openai_parts_as_hf({k: v for k, v in m.items() if v is not None}) for m in messages])
    return normalized, batched


def _openai_parts_as_hf(message: dict) -> dict:
    """OpenAI `image_url` parts as HF `{"type": "image", "url": ...}` items, as the mixin renders them (DeSTA then
    refuses images by name when tokenizing)."""
    if not isinstance(message.get("content"), list):
        return message
    content = []
    for part in message["content"]:
        if isinstance(part, dict) and part.get("type") == "image_url" and "image_url" in part:
            url = part["image_url"].get("url", "") if isinstance(part["image_url"], dict) else part["image_url"]
            part = {"type": "image", "url": url}
        content.append(part)
    return {**message, "content": content}


def _plain_message(value, depth: int):
    """Dataclasses and pydantic models, at any depth up to `MAX_CONTENT_DEPTH`, as dicts; everything else (text,
    arrays, bytes) as it is."""
    if depth > MAX_CONTENT_DEPTH:
        raise ValueError(f"A message is nested more than {MAX_CONTENT_DEPTH} levels deep; chat content is flat.")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain_message(getattr(value, field.name), depth + 1) for field in dataclasses.fields(value)
        }
    if callable(getattr(value, "model_dump", None)):
        return _plain_message(value.model_dump(), depth + 1)
    if isinstance(value, dict):
        return {key: _plain_message(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_message(item, depth + 1) for item in value]
    return value


def split_call_kwargs(chat_template: str, processor_kwargs: dict | None, kwargs: dict) -> tuple[dict, dict]:
    """(kwargs for the processor call, variables for the template): a loose kwarg the template does not use goes to
    the processor, with `ProcessorMixin`'s warning that it belongs in `processor_kwargs`."""
    template_variables = _get_template_variables(chat_template)
    stray = {key: value for key, value in kwargs.items() if key not in template_variables}
    if stray:
        logger.warning("Kwargs passed to `processor.__call__` have to be in `processor_kwargs` dict, not in `**kwargs`")
    template_kwargs = {key: value for key, value in kwargs.items() if key in template_variables}
    return {**(processor_kwargs or {}), **stray}, template_kwargs


def audio_chat(audio_items: list[dict], prompt: str | None = None, system_prompt: str | None = None) -> list[dict]:
    """The one builder of "a chat about some audio": a user turn with the audio items, then the prompt; a system turn
    only when `system_prompt` is given (otherwise the processor puts its `default_system_prompt` first, as it does for
    every chat), so a chat built here and one written by hand get the same system prompt."""
    content = [*audio_items, *([{"type": "text", "text": prompt}] if prompt else [])]
    system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    return [*system, {"role": "user", "content": content}]
