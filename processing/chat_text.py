"""Message text as the processor reads it: plain messages are checked, and special-token strings typed in message
text are fenced so that they are tokenised as text (no forged turns, no injected audio placeholders)."""

import dataclasses
import re

# Private-use characters fencing special-token strings found in message text, so that they are tokenised as
# plain text (never as the template's control tokens or the audio placeholder). Stripped from user text first.
INERT_OPEN, INERT_CLOSE = "\ue000", "\ue001"
FENCED_SPAN = re.compile(f"({INERT_OPEN}[^{INERT_CLOSE}]*{INERT_CLOSE})")
ROLE_PATTERN = re.compile(r"[A-Za-z][\w-]{0,63}")


class InertTextMixin:
    """Special-token strings in message text made inert; needs `tokenizer`, `audio_token` and the audio markers."""

    def _special_token_pattern(self) -> re.Pattern | None:
        """A regex matching every special token string of the tokenizer (the audio token included)."""
        key = (id(self.tokenizer), len(self.tokenizer), self.audio_token)
        if getattr(self, "_special_pattern_key", None) != key:
            specials = {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special}
            specials |= {self.audio_token, *self.tokenizer.all_special_tokens}
            ordered = sorted((s for s in specials if s), key=len, reverse=True)
            self._special_pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
            self._special_pattern_key = key
        return self._special_pattern

    def make_inert(self, text: str) -> str:
        """Message text with each special-token string fenced, so it is tokenised as text (no forged turns, no
        injected audio placeholders); `tokenize_prompts` honours the fences, `visible_text` removes them."""
        text = text.replace(INERT_OPEN, "").replace(INERT_CLOSE, "")
        pattern = self._special_token_pattern()
        return pattern.sub(lambda match: INERT_OPEN + match.group(0) + INERT_CLOSE, text) if pattern else text

    @staticmethod
    def visible_text(text: str) -> str:
        """Rendered text without the inert fences (what a reader should see)."""
        return text.replace(INERT_OPEN, "").replace(INERT_CLOSE, "")

    def tokenize_prompts(self, texts: list[str], add_special_tokens: bool = False, **kwargs) -> list[list[int]]:
        """Token ids of rendered texts: audio tokens become `<start_audio>` + token + `<end_audio>`, fenced
        special-token strings are tokenised as plain text. Unfenced text tokenises exactly as the tokenizer does."""
        marker = f"{self.audio_start_text}{self.audio_token}{self.audio_end_text}"
        if not any(INERT_OPEN in text for text in texts):
            encoded = self.tokenizer(
                [t.replace(self.audio_token, marker) for t in texts], add_special_tokens=add_special_tokens, **kwargs
            )
            return list(encoded["input_ids"])
        return [self._tokenize_fenced(text, marker, add_special_tokens) for text in texts]

    def _tokenize_fenced(self, text: str, marker: str, add_special_tokens: bool) -> list[int]:
        ids, first = [], True
        for part in FENCED_SPAN.split(text):
            if not part:
                continue
            fenced = part.startswith(INERT_OPEN)
            ids += self.tokenizer(
                part[1:-1] if fenced else part.replace(self.audio_token, marker),
                add_special_tokens=add_special_tokens and first,
                split_special_tokens=fenced,
            ).input_ids
            first = False
        return ids


def checked_messages(conversation):
    """`conversation` (one chat or a batch), after checking its plain messages; message objects (dataclasses,
    pydantic models) are left to the mixin. Runs before the mixin drops None-valued keys, so `content: None`
    is named as such."""
    batched = isinstance(conversation, (list, tuple)) and bool(conversation)
    batched = batched and isinstance(conversation[0], (list, tuple))
    for chat in conversation if batched else [conversation]:
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
