"""Serving throughput: DeSTA behind vLLM's OpenAI-compatible server against our `pipeline` at batch 8, same weights.

Run in the venv `.ci/vllm install` builds (vLLM's CPU build here; any vLLM on a GPU machine):

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--checkpoint DIR] [--requests 64] [--new-tokens 32]

Without `--checkpoint` it builds the tests' tiny servable checkpoint (a Llama with 32-dim heads around the real
Whisper tiny.en). Every request is one 2-5 s espeak clip with its transcript and a question, `max_tokens` new
tokens exactly (`ignore_eos`), greedy. Prints one JSON object: requests/s and generated tokens/s through the server
at concurrency 1, 8 and 32, the pipeline's at batch 8, and the server's own transcription cost (audio-only requests,
one at a time, against the same requests with transcripts).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from desta_audio import testing as tiny_assets
from desta_audio.testing.servers import free_port, wait_until_healthy

logger = logging.getLogger("bench_vllm")
SENTENCES = ["hello world", "one two three four five six", "the quick brown fox", "testing the audio model"]
QUESTION = "What is said in the audio?"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a saved DeSTA checkpoint (default: the tiny test checkpoint)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    return parser.parse_args(argv)


def make_clips(folder: Path, count: int) -> list[tuple[bytes, str]]:
    """`count` (clip, transcript) pairs, each clip distinct (its last sample changed), so that neither vLLM's
    processor and encoder caches nor anything else can reuse one request's audio work for another."""
    spoken = [(tiny_assets.speak(folder / f"{i}.wav", text).read_bytes(), text) for i, text in enumerate(SENTENCES)]
    return [(clip[:-2] + i.to_bytes(2, "little"), text) for i, (clip, text) in enumerate(spoken * count)][:count]


def start_server(checkpoint: str, args, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", checkpoint]
    command += [f"--dtype={args.dtype}", f"--gpu-memory-utilization={args.gpu_memory_utilization}"]
    command += ["--max-model-len=4096", "--trust-request-mm-kwargs", "--host=127.0.0.1", f"--port={port}"]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{base}/health", process, log, 900, "api_server", poll_s=2)
    except (RuntimeError, TimeoutError):
        process.kill()
        raise
    return process, base


def request_body(model: str, clip: bytes, transcript: str | None, new_tokens: int) -> dict:
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [audio, {"type": "text", "text": QUESTION}]}],
        "max_tokens": new_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    if transcript is not None:
        body["mm_processor_kwargs"] = {"transcripts": [transcript]}
    return body


async def run_load(base: str, bodies: list[dict], concurrency: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(client, body):
        nonlocal tokens
        async with gate:
            response = await client.post(f"{base}/v1/chat/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, body) for body in bodies))
        seconds = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(bodies),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(bodies) / seconds, 3),
        "generated_tokens_per_s": round(tokens / seconds, 1),
    }


def bench_pipeline(checkpoint: str, clips, args) -> dict:
    from desta_audio.runtime import load_pipeline

    pipe = load_pipeline(checkpoint, device="cpu", dtype=args.dtype)
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": c, "transcript": t}, {"type": "text", "text": QUESTION}],
            }
        ]
        for c, t in (clips[i % len(clips)] for i in range(args.requests))
    ]
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    pipe(chats[:8], batch_size=8, **options)  # warm-up
    start = time.perf_counter()
    pipe(chats, batch_size=8, **options)
    seconds = time.perf_counter() - start
    return {
        "batch_size": 8,
        "requests": len(chats),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(chats) / seconds, 3),
        "generated_tokens_per_s": round(len(chats) * args.new_tokens / seconds, 1),
    }


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_vllm_"))
    checkpoint = args.checkpoint or str(
        tiny_assets.build_servable_checkpoint(work / "model", tiny_assets.cached_whisper_tiny_en())
    )
    clips = make_clips(work, 4 * args.requests + 8)
    process, base = start_server(checkpoint, args, work / "api_server.log")
    try:
        model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        bodies = [request_body(model, clip, text, args.new_tokens) for clip, text in clips]
        asyncio.run(run_load(base, bodies[-8:], 8))  # warm-up, on clips no measured request uses
        batches = [bodies[i * args.requests : (i + 1) * args.requests] for i in range(3)]
        server = [asyncio.run(run_load(base, batch, level)) for batch, level in zip(batches, (1, 8, 32))]
        fresh = [request_body(model, clip, None, args.new_tokens) for clip, _ in clips[3 * args.requests :][:8]]
        with_asr = asyncio.run(run_load(base, fresh, 1))
        given = asyncio.run(run_load(base, [request_body(model, c, t, args.new_tokens) for c, t in clips[-16:-8]], 1))
    finally:
        process.terminate()
        process.wait(timeout=60)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "checkpoint": "tiny test checkpoint (Llama hidden 128, Whisper tiny.en)" if not args.checkpoint else checkpoint,
        "new_tokens": args.new_tokens,
        "vllm_server": server,
        "pipeline": bench_pipeline(checkpoint, clips, args),
        "server_asr": {
            "seconds_per_request_with_transcripts": round(given["seconds"] / given["requests"], 3),
            "seconds_per_request_transcribed_by_the_server": round(with_asr["seconds"] / with_asr["requests"], 3),
        },
    }
    logger.info("done")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
