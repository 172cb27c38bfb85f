"""`desta-audio` command line: ask a question about one or more audio clips.

    desta-audio chat clip.wav [more.wav ...] -p "What is the speaker's emotion?" [--model REPO_OR_DIR]
                [--stream] [--device cpu|cuda|auto] [--dtype auto|float32|bfloat16|float16] [-v]
    desta-audio eval (--data-file FILE | --dataset NAME | --rescore PREDICTIONS | --retention) [--model ...]
                (see docs/evaluation.md)
"""

import argparse
import logging
import os
import sys
import threading

from .evaluate import add_eval_arguments, run_eval
from .pipeline_desta import SYSTEM_PROMPT

DEFAULT_MODEL_ID = "desta-audio/DeSTA2.5-Audio-Llama-3.1-8B"
DEFAULT_PROMPT = "Describe the audio."

logger = logging.getLogger("desta-audio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desta-audio", description="DeSTA2.5-Audio from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", help="answer a question about audio clips")
    chat.add_argument("audio", nargs="+", help="audio files or http(s) URLs, all placed in one user turn")
    chat.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help=f"the question (default: {DEFAULT_PROMPT!r})")
    chat.add_argument("--system", default=SYSTEM_PROMPT, help=f"system prompt (default: {SYSTEM_PROMPT!r})")
    chat.add_argument("--transcript", action="append", default=None, help="transcript per clip, in order (skips ASR)")
    chat.add_argument("--model", default=DEFAULT_MODEL_ID, help=f"Hub id or local folder (default: {DEFAULT_MODEL_ID})")
    chat.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
    chat.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    chat.add_argument("--temperature", type=float, default=0.7, help="with --sample")
    chat.add_argument("--top-p", type=float, default=0.9, help="with --sample")
    chat.add_argument("--stream", action="store_true", help="print the answer token by token")
    chat.add_argument("-v", "--verbose", action="store_true", help="also print the transcripts used")
    chat.set_defaults(handler=run_chat)
    evaluate = commands.add_parser("eval", help="score a benchmark, re-score predictions, or check knowledge retention")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)
    return parser


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_audio_inputs(paths: list[str]) -> None:
    missing = [p for p in paths if not p.startswith(("http://", "https://")) and not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError("audio file not found: " + ", ".join(missing))


def build_conversation(args) -> list[dict]:
    transcripts = args.transcript or []
    if transcripts and len(transcripts) != len(args.audio):
        raise ValueError(f"got {len(transcripts)} --transcript values for {len(args.audio)} audio clips")
    items = [
        {"type": "audio", "path": path, **({"transcript": transcripts[i]} if transcripts else {})}
        for i, path in enumerate(args.audio)
    ]
    conversation = [{"role": "user", "content": items + [{"type": "text", "text": args.prompt}]}]
    if args.system:
        conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": args.system}]})
    return conversation


def load_pipeline(model: str, device: str, dtype: str):
    from transformers import pipeline

    return pipeline("audio-text-to-text", model=model, trust_remote_code=True, device=resolve_device(device), dtype=dtype)


def generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample}
    if args.sample:
        kwargs.update(temperature=args.temperature, top_p=args.top_p)
    return kwargs


def run_chat(args) -> int:
    check_audio_inputs(args.audio)
    conversation = build_conversation(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    if args.stream:
        result = stream_answer(pipe, conversation, generation_kwargs(args))
    else:
        result = pipe(conversation, **generation_kwargs(args))
        sys.stdout.write(result["generated_text"] + "\n")
    if args.verbose:
        for path, transcript in zip(args.audio, result["transcripts"]):
            sys.stderr.write(f"[transcript] {path}: {transcript}\n")
    return 0


def stream_answer(pipe, conversation: list[dict], kwargs: dict) -> dict:
    """Print tokens as `generate` produces them; return the pipeline's full result."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result, errors = {}, []

    def answer():
        try:
            result.update(pipe(conversation, streamer=streamer, **kwargs))
        except Exception as error:  # re-raised in the main thread once the streamer is released
            errors.append(error)
            streamer.end()

    worker = threading.Thread(target=answer)
    worker.start()
    for piece in streamer:
        sys.stdout.write(piece)
        sys.stdout.flush()
    worker.join()
    if errors:
        raise errors[0]
    sys.stdout.write("\n")
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, OSError) as error:
        sys.stderr.write(f"desta-audio: error: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
