"""Knowledge retention (the paper's central claim: a frozen LLM keeps its text skills): the model against its
base LLM on text-only prompts, by the exact-match rate of greedy outputs and the mean per-token log-likelihood
difference on the same continuations (given references, or the base's own greedy outputs).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import jsonl_records, read_text
from ..runtime import chunks, quantized_load_kwargs, resolve_device
from .scoring import write_report

logger = logging.getLogger(__name__)

RETENTION_MAX_NEW_TOKENS = 64
RETENTION_JSON = "retention.json"
RETENTION_MARKDOWN = "retention.md"
RETENTION_PROMPTS_FILE = Path(__file__).with_name("retention_prompts.txt")


@dataclass
class RetentionPrompt:
    prompt: str
    reference: str | None = None


def load_retention_prompts(path: str | os.PathLike | None = None) -> list[RetentionPrompt]:
    """Prompts from a `.txt` file (one per line, `#` comments) or a `.jsonl` of `{"prompt", "reference"?}`.

    Defaults to the built-in `retention_prompts.txt`.
    """
    path = Path(path) if path is not None else RETENTION_PROMPTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"retention prompts file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        return [_retention_prompt(row, path, number) for number, row in jsonl_records(path)]
    lines = [line.strip() for line in read_text(path).splitlines()]
    return [RetentionPrompt(line) for line in lines if line and not line.startswith("#")]


def _retention_prompt(row: dict, path: Path, number: int) -> RetentionPrompt:
    if "prompt" not in row:
        raise ValueError(
            f"{path}:{number} has no 'prompt' field (it has {sorted(row)}); every line needs "
            '{"prompt": ..., "reference": ... (optional)}.'
        )
    return RetentionPrompt(row["prompt"], row.get("reference"))


def unwrap_peft(model):
    """The Desta model inside a `PeftModel` (whose LoRA layers live in it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _without_adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with PEFT's LoRA tensors dropped and `base_layer` wrappers flattened: the original weights."""
    return {key.replace(".base_layer.", "."): value for key, value in state.items() if ".lora_" not in key}


def rebuild_base_llm(model):
    """The base LLM of a Desta model: its `language_model` + `lm_head` as the text config's causal-LM class.

    The weights are the model's own tensors (no copy); LoRA adapters, if any, are left out, so the result is the
    LLM before adaptation. A model whose adapters were merged into its weights cannot be undone this way: pass
    the base LLM's folder or id instead.
    """
    from transformers import AutoModelForCausalLM

    desta = unwrap_peft(model)
    language_model, lm_head = desta.model.language_model, desta.lm_head
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(desta.config.text_config)
    base.get_decoder().load_state_dict(_without_adapters(language_model.state_dict()), assign=True)
    base.get_output_embeddings().load_state_dict(_without_adapters(lm_head.state_dict()), assign=True)
    _copy_non_persistent_buffers(base.get_decoder(), language_model)
    leftover = [name for name, tensor in [*base.named_parameters(), *base.named_buffers()] if tensor.is_meta]
    if leftover:
        raise ValueError(f"Could not rebuild the base LLM from the Desta model; missing {leftover[:5]}.")
    base.generation_config = desta.generation_config
    return base.eval()


def _copy_non_persistent_buffers(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Buffers a state dict leaves out (e.g. rotary `inv_freq`), taken from the same-named source buffers."""
    for name, buffer in list(target.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            owner = target.get_submodule(module_name) if module_name else target
            owner.register_buffer(buffer_name, source.get_buffer(name), persistent=False)


def load_base_llm(base_llm, like):
    """A base causal LM: a folder / Hub id (on `like`'s device and dtype), an in-memory LM, or rebuilt from `like`."""
    from transformers import AutoModelForCausalLM

    if base_llm is None:
        return rebuild_base_llm(like)
    if isinstance(base_llm, (str, os.PathLike)):
        loaded = AutoModelForCausalLM.from_pretrained(os.fspath(base_llm), dtype=like.dtype)
        return loaded.to(like.device).eval()
    return base_llm.eval()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A single user turn through the tokenizer's chat template (plain text + BOS for tokenizers without one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(prompt).input_ids


def _pad(rows: list[list[int]], pad_id: int, side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[index, span] = torch.tensor(row, dtype=torch.long)
        mask[index, span] = 1
    return ids.to(device), mask.to(device)


def _eos_ids(generation_config) -> set[int]:
    eos = generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in eos:
            return ids[: index + 1]
    return ids


def _vocab_size(model) -> int:
    return unwrap_peft(model).get_output_embeddings().weight.shape[0]


@torch.no_grad()
def greedy_continuations(
    model, prompts: list[list[int]], generation_config, pad_id: int, batch_size: int, suppress: list[int]
) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids, up to and including the first end-of-sequence token)."""
    device = unwrap_peft(model).device
    eos = _eos_ids(generation_config)
    extra = {"suppress_tokens": suppress} if suppress else {}
    outputs = []
    for batch in chunks(prompts, batch_size):
        input_ids, attention_mask = _pad(list(batch), pad_id, "left", device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **extra
        )
        outputs.extend(_cut_at_eos(row.tolist(), eos) for row in generated[:, input_ids.shape[1] :])
    return outputs


@torch.no_grad()
def continuation_logprobs(
    model, prompts: list[list[int]], continuations: list[list[int]], pad_id: int, batch_size: int, vocab: int
) -> list[list[float]]:
    """Teacher-forced log-probability of every continuation token given its prompt (right padding, so positions are
    the unpadded ones), normalised over the first `vocab` entries."""
    device = unwrap_peft(model).device
    results = []
    pairs = list(zip(prompts, continuations, strict=True))
    for batch in chunks(pairs, batch_size):
        input_ids, attention_mask = _pad([p + c for p, c in batch], pad_id, "right", device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        for row, (prompt, continuation) in enumerate(batch):
            predicting = logits[row, len(prompt) - 1 : len(prompt) + len(continuation) - 1, :vocab].float()
            targets = torch.tensor(continuation, dtype=torch.long, device=device)
            results.append(predicting.log_softmax(dim=-1).gather(1, targets[:, None])[:, 0].tolist())
    return results


def knowledge_retention(
    model,
    tokenizer,
    base_llm=None,
    prompts: Sequence[RetentionPrompt | str] | None = None,
    max_new_tokens: int = RETENTION_MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> dict:
    """Compare a Desta model (optionally a `PeftModel`) with its base LLM on text-only prompts.

    `base_llm`: None rebuilds it from the model's own LLM weights (adapters left out); or a folder / Hub id / model.
    Both models get the same token ids in the same batches, so a frozen LLM gives exactly `exact_match_rate` 1.0
    and `mean_logprob_diff` 0.0. Log-likelihoods are over the same continuation per prompt: its `reference` where
    given, else the base's greedy output; `mean_logprob_diff` is the token-weighted mean of model - base.
    Where the model's vocabulary grew (an added audio token), the extra rows are ignored on both sides.
    """
    prompts = [
        p if isinstance(p, RetentionPrompt) else RetentionPrompt(p) for p in (prompts or load_retention_prompts())
    ]
    if not prompts:
        raise ValueError("No retention prompts.")
    base = load_base_llm(base_llm, unwrap_peft(model))
    model.eval()
    vocab = min(_vocab_size(model), _vocab_size(base))
    generation_config = copy.deepcopy(unwrap_peft(model).generation_config)
    generation_config.update(
        do_sample=False, max_new_tokens=max_new_tokens, temperature=None, top_p=None, top_k=None, num_beams=1
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation_config.pad_token_id = pad_id
    encoded = [prompt_ids(tokenizer, p.prompt) for p in prompts]

    model_outputs = greedy_continuations(
        model, encoded, generation_config, pad_id, batch_size, list(range(vocab, _vocab_size(model)))
    )
    base_outputs = greedy_continuations(
        base, encoded, generation_config, pad_id, batch_size, list(range(vocab, _vocab_size(base)))
    )
    continuations = [
        tokenizer(p.reference, add_special_tokens=False).input_ids if p.reference else output
        for p, output in zip(prompts, base_outputs, strict=True)
    ]
    model_logprobs = continuation_logprobs(model, encoded, continuations, pad_id, batch_size, vocab)
    base_logprobs = continuation_logprobs(base, encoded, continuations, pad_id, batch_size, vocab)
    return _retention_report(tokenizer, prompts, model_outputs, base_outputs, model_logprobs, base_logprobs)


def _retention_report(tokenizer, prompts, model_outputs, base_outputs, model_logprobs, base_logprobs) -> dict:
    items = []
    differences = []
    for prompt, ours, theirs, ours_lp, theirs_lp in zip(
        prompts, model_outputs, base_outputs, model_logprobs, base_logprobs, strict=True
    ):
        token_diffs = [a - b for a, b in zip(ours_lp, theirs_lp, strict=True)]
        differences.extend(token_diffs)
        items.append(
            {
                "prompt": prompt.prompt,
                "continuation": "reference" if prompt.reference else "base_greedy",
                "model_output": tokenizer.decode(ours, skip_special_tokens=True),
                "base_output": tokenizer.decode(theirs, skip_special_tokens=True),
                "exact_match": ours == theirs,
                "num_tokens": len(token_diffs),
                "model_mean_logprob": _mean(ours_lp),
                "base_mean_logprob": _mean(theirs_lp),
                "mean_logprob_diff": _mean(token_diffs),
            }
        )
    summary = {
        "num_prompts": len(items),
        "num_tokens": len(differences),
        "exact_match_rate": sum(item["exact_match"] for item in items) / len(items),
        "mean_logprob_diff": _mean(differences),
        "mean_abs_logprob_diff": _mean([abs(d) for d in differences]),
        "model_mean_logprob": _mean([lp for row in model_logprobs for lp in row]),
        "base_mean_logprob": _mean([lp for row in base_logprobs for lp in row]),
    }
    return {"summary": summary, "items": items}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def retention_markdown(report: dict) -> str:
    summary = report["summary"]
    lines = ["| metric | value |", "| --- | --- |"]
    lines.extend(
        f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in summary.items()
    )
    return "\n".join(lines) + "\n"


def write_retention(report: dict, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`retention.json` and its Markdown table in `output_dir`."""
    return write_report(report, retention_markdown(report), output_dir, RETENTION_JSON, RETENTION_MARKDOWN)


def load_model_and_tokenizer(
    model_id: str | os.PathLike, device: str = "auto", dtype: str = "auto", quantize: str | None = None
):
    """A Desta checkpoint (folder or Hub id) for text-only use, with its LLM tokenizer; `quantize` as in
    `runtime.quantization_config` (the base LLM it is compared with stays full precision)."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(os.fspath(model_id), trust_remote_code=True)
    if quantize:
        placement = quantized_load_kwargs(quantize, device, dtype)
        model = AutoModelForCausalLM.from_pretrained(
            os.fspath(model_id), trust_remote_code=True, dtype=dtype, **placement
        )
        return model.eval(), processor.tokenizer
    model = AutoModelForCausalLM.from_pretrained(os.fspath(model_id), trust_remote_code=True, dtype=dtype)
    return model.to(resolve_device(device)).eval(), processor.tokenizer
