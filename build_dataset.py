#!/usr/bin/env python3
"""Build DeSTA-style self-generated training data: seed descriptions from metadata, answered by the backbone LLM.

Examples:
  # a folder of audio described by a CSV (columns: file, text, gender, emotion)
  python build_dataset.py --audio-dir clips/ --metadata clips/meta.csv --audio-column file \\
      --transcript-column text --attribute-columns gender,emotion \\
      --model meta-llama/Llama-3.1-8B-Instruct --output-dir out/

  # a datasets dataset, 4 machines: run shard K of 4 on each, then merge once
  python build_dataset.py --dataset ashraq/esc50 --split train --attribute-columns category \\
      --model LLM --output-dir out/ --num-shards 4 --shard-index K
  python build_dataset.py --output-dir out/ --merge-only

  # any OpenAI-compatible server (vllm serve, SGLang, transformers serve), 64 requests in flight
  vllm serve meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 8 --port 8000 &
  python build_dataset.py --audio-dir clips/ --metadata clips/meta.csv ... --engine openai \\
      --base-url http://127.0.0.1:8000/v1 --model meta-llama/Llama-3.1-8B-Instruct \\
      --max-concurrency 64 --batch-size 256 --output-dir out/

Rerunning the same command resumes: rows already in OUTPUT_DIR/records are skipped by id.
Every flag has both spellings, --audio-dir and --audio_dir; a bare boolean flag means true (--merge-only).
A user error ends in one line `build_dataset.py: error: ...` (exit code 2); `--debug` shows the traceback instead.
The library behind this script is `desta_audio.data` (its flags: `desta_audio.data.arguments.BuildArguments`).
"""

import sys

from desta_audio.data.arguments import main

if __name__ == "__main__":
    sys.exit(main(prog="build_dataset.py", description=__doc__))
