"""Quantized loading on CPU: fp32, bf16, int8 (torchao), 8-bit and 4-bit (bitsandbytes nf4); prints JSON.

Models: `small`, the real small DeSTA (SmolLM2-135M-Instruct + Whisper tiny.en, `cached_small_desta()`), and
`large`, random weights built from configs (a Llama of `--hidden-size`/`--layers`, ~0.85 B parameters by default,
plus a whisper-small-sized Whisper: d_model 768, 12+12 layers), saved in bfloat16 with the tests' tokenizer.

Each (model, scheme) loads in a fresh subprocess, so nothing of an earlier load counts:
- `load_s`: `from_pretrained` wall time; `peak_rss_gb`: the process's peak resident set (`ru_maxrss`) right after
  loading, and `rss_before_gb` just before it (Python, torch and transformers imported). Weights loaded in their
  stored dtype stay memory-mapped from the safetensors file and count only once read: `peak_rss_after_decoding_gb`
  is the peak after decoding;
- `footprint_gb`: `get_memory_footprint()`; `state_dict_gb`: the bytes of the state dict's storages, quantized
  tensor subclasses flattened into their inner tensors (torchao's tensors are not counted by the footprint);
- `tokens_per_s`: greedy decoding at batch 1 over the fixed prompts (prefill included);
- `token_agreement`: generated tokens equal to fp32's at the same position (over all prompts), `same_answers`:
  prompts whose whole answer equals fp32's, `first_logit_cosine`: mean cosine of the first generated token's logits
  with fp32's. The random `large` model has flat logits, so its agreement is a lower bound of a trained model's.

Quantized schemes keep the unquantized parts (connector, norms, embeddings) in float32, as 4-bit computes on CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_quantization.py [--models small large] [--schemes fp32 4bit]
        [--new-tokens 16] [--prompts 6] [--hidden-size 2048] [--layers 16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from desta_audio import runtime
from desta_audio import testing as tiny_assets
from desta_audio.small.desta import cached_small_desta
from desta_audio.testing.assets import AUDIO_TOKEN

SCHEMES = {  # name: (--quantize name, dtype of what is not quantized)
    "fp32": (None, torch.float32),
    "bf16": (None, torch.bfloat16),
    "int8": ("int8", torch.float32),
    "8bit": ("8bit", torch.float32),
    "4bit": ("4bit", torch.float32),
}
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "How many legs does a spider have?",
    "What does a thermometer measure?",
    "Give a synonym for happy.",
]
AUDIO_QUESTIONS = ["What do you hear in the audio?", "Describe the sound."]
WHISPER_SMALL = {
    "d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 12,
    "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "num_mel_bins": 80,
    "vocab_size": 51865,
}  # fmt: skip
GB = 1e9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["small", "large"], default=["small", "large"])
    parser.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES))
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens per prompt at most (default 16)")
    parser.add_argument("--prompts", type=int, default=6, help="text prompts (default 6), plus two with audio")
    parser.add_argument("--hidden-size", type=int, default=2048, help="the large model's Llama width")
    parser.add_argument("--layers", type=int, default=16, help="the large model's Llama depth")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the built large model here")
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "SCHEME"), help=argparse.SUPPRESS)  # child
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the models


def build_large(folder: Path, hidden_size: int, layers: int) -> Path:
    """A random DeSTA from configs (a Llama and a whisper-small-sized Whisper), saved in bfloat16 with a processor."""
    from transformers import WhisperFeatureExtractor

    from modeling_desta import DestaConfig, DestaForConditionalGeneration
    from processing import DestaProcessor

    if (folder / "model.safetensors.index.json").exists() or (folder / "model.safetensors").exists():
        return folder
    tokenizer = tiny_assets.build_tokenizer()
    text = {
        "model_type": "llama", "vocab_size": 32000, "hidden_size": hidden_size, "intermediate_size": 11 * hidden_size // 4,
        "num_hidden_layers": layers, "num_attention_heads": hidden_size // 64, "num_key_value_heads": hidden_size // 512,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": False,
    }  # fmt: skip
    config = DestaConfig(
        audio_config={"model_type": "whisper", **WHISPER_SMALL},
        text_config=text,
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        num_audio_queries=64,
        audio_layer_ids=[2, 5, 8, 11],
    )
    torch.manual_seed(0)
    model = DestaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    processor = DestaProcessor(
        WhisperFeatureExtractor(feature_size=80), tokenizer, audio_token=AUDIO_TOKEN, num_audio_queries=64
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def conversations(prompts: int) -> list[list[dict]]:
    """The fixed prompts: `prompts` text questions, then two questions about a 2 s tone with its transcript."""
    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = {"type": "audio", "array": tone, "sampling_rate": 16000, "transcript": " "}
    chats = [[{"role": "user", "content": [{"type": "text", "text": q}]}] for q in QUESTIONS[:prompts]]
    chats += [[{"role": "user", "content": [audio, {"type": "text", "text": q}]}] for q in AUDIO_QUESTIONS]
    return chats


# ----------------------------------------------------------------------------- one load, in a child process


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def tensor_bytes(tensor: torch.Tensor, seen: set[int]) -> int:
    """Bytes of a tensor's storage not counted yet; a tensor subclass (torchao) counts its inner tensors."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name), seen) for name in names)
    storage = tensor.untyped_storage()
    if storage.data_ptr() in seen:
        return 0
    seen.add(storage.data_ptr())
    return storage.nbytes()


def state_dict_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    return sum(tensor_bytes(t, seen) for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def load(folder: str, scheme: str):
    from modeling_desta import DestaForConditionalGeneration

    quantize, dtype = SCHEMES[scheme]
    options = runtime.quantized_load_kwargs(quantize, "cpu", dtype) if quantize else {}
    return DestaForConditionalGeneration.from_pretrained(folder, dtype=dtype, **options).eval()


def greedy(model, processor, chats: list[list[dict]], new_tokens: int) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy answers (token ids) and the first generated token's logits, one prompt at a time."""
    answers, first_logits = [], []
    for chat in chats:
        inputs = processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(model.model.audio_tower.dtype)
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        answers.append(out.sequences[0, inputs["input_ids"].shape[1] :].tolist())
        first_logits.append(out.logits[0][0].float().tolist())
    return answers, first_logits


def measure(folder: str, scheme: str, new_tokens: int, prompts: int) -> dict:
    """Load `folder` with `scheme` in this fresh process, then decode the fixed prompts."""
    from processing import DestaProcessor

    processor = DestaProcessor.from_pretrained(folder)
    chats = conversations(prompts)
    before = rss_bytes()
    started = time.perf_counter()
    model = load(folder, scheme)
    load_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    footprint, stored = model.get_memory_footprint(), state_dict_bytes(model)
    greedy(model, processor, chats[:1], 2)  # warm-up
    started = time.perf_counter()
    answers, first_logits = greedy(model, processor, chats, new_tokens)
    seconds = time.perf_counter() - started
    return {
        "scheme": scheme,
        "load_s": round(load_s, 2),
        "rss_before_gb": round(before / GB, 3),
        "peak_rss_gb": round(peak / GB, 3),
        "footprint_gb": round(footprint / GB, 3),
        "state_dict_gb": round(stored / GB, 3),
        "tokens_per_s": round(sum(map(len, answers)) / seconds, 2),
        "peak_rss_after_decoding_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3),
        "answers": answers,
        "first_logits": first_logits,
    }


# ----------------------------------------------------------------------------- the comparison


def agreement(run: dict, reference: dict) -> dict:
    """Greedy agreement and first-token logit cosine of `run` with the fp32 `reference`."""
    equal = total = 0
    for ours, theirs in zip(run["answers"], reference["answers"]):
        equal += sum(a == b for a, b in zip(ours, theirs))
        total += max(len(ours), len(theirs))
    cosines = [
        torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0).item()
        for a, b in zip(run["first_logits"], reference["first_logits"])
    ]
    same = sum(a == b for a, b in zip(run["answers"], reference["answers"]))
    return {
        "token_agreement": round(equal / max(total, 1), 3),
        "same_answers": f"{same}/{len(reference['answers'])}",
        "first_logit_cosine": round(sum(cosines) / len(cosines), 5),
    }


def measure_in_child(folder: Path, scheme: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--measure", str(folder), scheme]
    command += ["--new-tokens", str(args.new_tokens), "--prompts", str(args.prompts)]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{scheme} on {folder} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(folder: Path, args: argparse.Namespace) -> dict:
    """Every scheme on one model folder; fp32 (always run) is the reference."""
    runs = {scheme: measure_in_child(folder, scheme, args) for scheme in dict.fromkeys(["fp32", *args.schemes])}
    reference = runs["fp32"]
    rows = []
    for scheme, run in runs.items():
        if scheme not in args.schemes:
            continue
        summary = {k: v for k, v in run.items() if k not in ("answers", "first_logits")}
        rows.append({**summary, **agreement(run, reference)})
    return {"folder": str(folder), "fp32_gb": reference["state_dict_gb"], "runs": rows}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        folder, scheme = args.measure
        json.dump(measure(folder, scheme, args.new_tokens, args.prompts), sys.stdout)
        sys.stdout.write("\n")
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "small":
                folder = cached_small_desta()
            else:
                folder = build_large((args.workdir or Path(tmp)) / "large", args.hidden_size, args.layers)
            results[name] = compare(folder, args)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
        "torch": torch.__version__,
        "new_tokens": args.new_tokens,
        "prompts": args.prompts + len(AUDIO_QUESTIONS),
        "models": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
