"""Peak memory of assembling a model, as a multiple of the model's own bytes; prints JSON.

Paths: `from_components` (LLM + Whisper folders -> fresh model), `release` (a folder in the authors' release
format through `DestaForConditionalGeneration.from_pretrained`), `convert` (the release converted and saved) and
`from_pretrained` (a saved checkpoint of this package). Each runs in a fresh subprocess; the number is the rise
of the process's peak resident set (`ru_maxrss`) over its resident set just before loading, divided by the bytes
of the model's parameters and buffers.

The model: a random Llama built from a config (~0.5 B parameters, bfloat16 on disk and in memory) and the real
Whisper tiny.en (built offline from its PyPI package), with a 6-layer Q-Former of 64 queries on 4 taps.

    python benchmarks/bench_memory.py [--hidden-size 1024] [--layers 24] [--workdir DIR]
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig

from desta_audio import testing as tiny_assets
from modeling_desta import DestaConfig, DestaConnector, DestaForConditionalGeneration
from modeling_desta.release_desta import LLAMA3_AUDIO_TOKEN, REFERENCE_PREFIX
from processing import DestaProcessor

DTYPE = torch.bfloat16
PATHS = ("from_components", "release", "convert", "from_pretrained")


def build_llm(folder: Path, hidden_size: int, layers: int) -> int:
    """A random Llama of about 0.5 B parameters (vocabulary 32000), saved in bfloat16 with the tiny tokenizer."""
    tokenizer = tiny_assets.build_tokenizer()
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=hidden_size // 256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM._from_config(config, dtype=DTYPE)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def build_release(folder: Path, llm_dir: Path, whisper_dir: Path) -> None:
    """A folder in the release's format: connector tensors under `perception.connector.` and the reference fields."""
    config = DestaConfig(
        audio_config=WhisperConfig.from_pretrained(whisper_dir),
        text_config=LlamaConfig.from_pretrained(llm_dir),
        audio_layer_ids=[0, 1, 2, 3],
        qformer_num_hidden_layers=6,
    )
    state = {REFERENCE_PREFIX + name: tensor for name, tensor in DestaConnector(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, folder / "model.safetensors")
    fields = {
        "model_type": "desta25",
        "llm_model_id": str(llm_dir),
        "encoder_model_id": str(whisper_dir),
        "connector_mode": "qformer_1",
        "qformer_num_hidden_layers": 6,
        "prompt_size": 64,
        "use_lora": False,
        "audio_locator": "<|AUDIO|>",
        "placeholder_token": LLAMA3_AUDIO_TOKEN,
    }
    (folder / "config.json").write_text(json.dumps(fields, indent=2))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def model_bytes(model: torch.nn.Module) -> int:
    tensors = {t.untyped_storage().data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.untyped_storage().nbytes() for t in tensors.values())


def measure(path: str, workdir: Path) -> dict:
    """Run one assembly path in this (fresh) process and report its peak RSS rise over the model's bytes."""
    llm_dir, whisper_dir, release_dir = workdir / "llm", workdir / "whisper", workdir / "release"
    before = rss_bytes()
    if path == "from_components":
        model = DestaForConditionalGeneration.from_components(llm_dir, whisper_dir, dtype=DTYPE)
    elif path == "release":
        model = DestaForConditionalGeneration.from_pretrained(release_dir, dtype=DTYPE)
    elif path == "convert":
        model = DestaForConditionalGeneration.from_release(release_dir, dtype=DTYPE)
        model.save_pretrained(workdir / "converted")
        DestaProcessor.from_release(release_dir).save_pretrained(workdir / "converted")
    else:
        model = DestaForConditionalGeneration.from_pretrained(workdir / "converted", dtype=DTYPE)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = model_bytes(model)
    return {
        "path": path,
        "model_gb": round(size / 1e9, 3),
        "rss_before_gb": round(before / 1e9, 3),
        "peak_rss_gb": round(peak / 1e9, 3),
        "peak_rise_over_model": round((peak - before) / size, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the built models here (default: a temp dir)")
    parser.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)  # one path, in a child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workdir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        llm_params = build_llm(workdir / "llm", args.hidden_size, args.layers)
        whisper_dir = tiny_assets.cached_whisper_tiny_en()
        (workdir / "whisper").unlink(missing_ok=True)
        (workdir / "whisper").symlink_to(whisper_dir)
        build_release(workdir / "release", workdir / "llm", workdir / "whisper")
        # Each path in its own process, so no allocation of an earlier one (or of building) counts.
        runs = [
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--measure", path, "--workdir", str(workdir)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for path in PATHS
        ]
    print(
        json.dumps(
            {
                "llm_parameters": llm_params,
                "dtype": str(DTYPE),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
