"""Multiple choice by option likelihood (`desta-audio eval --mcq-scoring likelihood`), the usual way to score small
models, whose free answers often name no option at all.

Each item is asked exactly as for generation: the same chat (`data.build_conversation`), rendered, read and
encoded by the pipeline itself (`preprocess`, then `model_inputs`: audio vectors, Whisper's transcripts, the same
prompt ids). Then each choice's answer text, the answer the MMAU system prompt asks for,
`The correct answer is: "{choice}"`, is appended as the assistant's reply and teacher-forced. Its score is the
**sum** of the log-probabilities of all its tokens (not length-normalised; the shared prefix adds the same amount to
every choice, so the choices differ by the log-probability of the choice's tokens and the closing quote given the
prefix). The highest score wins (the first of equal ones); its answer text is the item's `model_output`, so MMAU's
rule scores it like a generated answer. Each prediction also keeps every choice's score and token count
(`choice_logprobs`, `choice_tokens` in `predictions.jsonl`), enough to rank by the per-token mean instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .scoring import MMAU_ANSWER_PREFIX

ANSWER_TEMPLATE = MMAU_ANSWER_PREFIX + '"{choice}"'
SCORING_MODES = ("generate", "likelihood")


def answer_text(choice: str) -> str:
    return ANSWER_TEMPLATE.format(choice=choice)


@torch.no_grad()
def choice_outputs(pipe, conversations: Sequence[list[dict]], choices: Sequence[Sequence[str]]) -> list[dict]:
    """Per conversation, the pipeline-shaped output of its best choice: `generated_text` (that choice's answer
    text), `transcripts`, and the scores of every choice (`choice_logprobs`, `choice_tokens`)."""
    prepared = [pipe.preprocess(conversation) for conversation in conversations]
    encoded, audio_embeds, transcripts = pipe.model_inputs(prepared)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    embeds = _embeds_per_prompt(prompts, audio_embeds, pipe.processor.audio_token_id)
    tokenizer = pipe.processor.tokenizer
    answers = [[tokenizer(answer_text(c), add_special_tokens=False).input_ids for c in options] for options in choices]
    scores = answer_logprobs(pipe.model, tokenizer, prompts, answers, embeds)
    outputs, offset = [], 0
    for item, options, item_answers, item_scores in zip(prepared, choices, answers, scores, strict=True):
        count = len(item["waveforms"])
        best = max(range(len(options)), key=item_scores.__getitem__)
        outputs.append(
            {
                "generated_text": answer_text(options[best]),
                "transcripts": transcripts[offset : offset + count],
                "choice_logprobs": [round(score, 4) for score in item_scores],
                "choice_tokens": [len(ids) for ids in item_answers],
            }
        )
        offset += count
    return outputs


def _embeds_per_prompt(prompts: list[list[int]], audio_embeds, audio_token_id) -> list[torch.Tensor | None]:
    """The connector's vectors of each prompt (they come in prompt order, one per audio placeholder)."""
    if audio_embeds is None:
        return [None] * len(prompts)
    counts = [ids.count(audio_token_id) for ids in prompts]
    return [part if count else None for part, count in zip(audio_embeds.split(counts), counts)]


def answer_logprobs(
    model, tokenizer, prompts: list[list[int]], answers: list[list[list[int]]], embeds: list[torch.Tensor | None]
) -> list[list[float]]:
    """For each prompt and each of its answers (token ids), the summed log-probability of the answer's tokens
    after the prompt. All (prompt, answer) rows go through the model at once, left-padded, so every answer ends at
    the last position and only the last (longest answer + 1) positions need logits."""
    rows = [prompt + answer for prompt, options in zip(prompts, answers) for answer in options]
    row_embeds = [e for e, options in zip(embeds, answers) for _ in options if e is not None]
    padded = tokenizer.pad({"input_ids": rows}, padding=True, padding_side="left", return_tensors="pt")
    device = model.device
    mask = padded["attention_mask"].to(device)
    keep = max(len(answer) for options in answers for answer in options) + 1
    logits = model(
        input_ids=padded["input_ids"].to(device),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        audio_embeds=torch.cat(row_embeds) if row_embeds else None,
        use_cache=False,
        logits_to_keep=keep,
    ).logits.float()
    logprobs = logits[:, :-1].log_softmax(-1)  # position k predicts the token at k + 1
    scores, row = [], 0
    for options in answers:
        item_scores = []
        for answer in options:
            targets = torch.tensor(answer, device=device)
            predicted = logprobs[row, logprobs.shape[1] - len(answer) :]
            item_scores.append(predicted.gather(1, targets[:, None]).sum().item())
            row += 1
        scores.append(item_scores)
    return scores
