#!/usr/bin/env bash
# One GPU check of DeSTA2.5-Audio at the release's real sizes, random weights built from configs (no download):
# the audio-text-to-text pipeline on a 30 s clip at batch 1 and 8 (latency, decode tokens/s, peak GPU memory), one
# connector training step at batch 12 with activation checkpointing (step time, peak memory), Whisper large-v3's
# greedy ASR through the lean loop and through `generate` (ms per step, same tokens), the pipeline at batch 1 with the
# model loaded in 4-bit (goals: peak GPU memory <= 7 GB, decode >= 0.6x bf16 tokens/s), and, when vLLM is installed,
# the vLLM engine of build_dataset.py on a small LLM and the real-size model served through the plugin. Prints one
# table (and a JSON line). Budget: under 9.5 minutes on one H100/H200 (~40 GB of GPU memory with vLLM).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --tiny           # tiny configs: the same code on a CPU in about a minute
#   bash benchmarks/gpu_check.sh --configs-only   # print the shapes it would build, run nothing
# Other options: python benchmarks/gpu_check.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec timeout "${GPU_CHECK_TIMEOUT:-570}" python benchmarks/gpu_check.py "$@"
