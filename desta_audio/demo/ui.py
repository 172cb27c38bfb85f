"""The Gradio page of the web demo and its launcher (`app.py`, `desta-audio demo`).

Gradio is imported inside the functions that build the page only: it is the `demo` extra, never a dependency of the
library.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from processing import DEFAULT_SYSTEM_PROMPT

from .examples import EXAMPLES_DIR, example_inputs
from .session import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MODEL_ID,
    MODEL_ENV_VAR,
    Chat,
    DemoInputError,
    ModelLoader,
    add_user_turn,
    answer,
    generation_kwargs,
)

logger = logging.getLogger(__name__)

# One answer is generated at a time (one model in memory; a second `generate` would halve both); up to
# QUEUE_MAX_SIZE more requests wait in Gradio's queue, which shows them their place, and further ones are refused.
CONCURRENCY_LIMIT = 1
QUEUE_MAX_SIZE = 16
STATUS_POLL_SECONDS = 1.0
NEEDS_GRADIO = "the web demo needs Gradio: python -m pip install 'desta-audio[demo]' (or -e \".[demo]\")"
TITLE = "DeSTA2.5-Audio"
INTRO = (
    "Upload or record one or more audio clips, ask a question, and watch the answer arrive token by token. "
    "Follow-up questions are about the same clips; **New chat** starts over."
)


def format_transcripts(transcripts: list[tuple[str, str]]) -> str:
    return "\n".join(f"{name}: {text or '(no speech detected)'}" for name, text in transcripts)


def build_app(loader: ModelLoader, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The page, served by `launch`; `loader` may still be loading (the page shows its progress)."""
    import gradio as gr

    respond = make_responder(loader, max_bytes=int(max_upload_mb * 2**20))
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        status = gr.Markdown(loader.status(), elem_id="model-status")
        chat_state = gr.State(Chat())
        with gr.Row():
            with gr.Column(scale=3):
                chatbot, box, notice = chat_column()
            with gr.Column(scale=2):
                transcripts, new_chat, settings = side_column()
        gr.Examples(example_inputs(), inputs=box, label="Example clips")

        box.submit(
            respond,
            inputs=[box, chat_state, *settings],
            outputs=[box, chatbot, transcripts, notice, chat_state],
            concurrency_limit=CONCURRENCY_LIMIT,
        )
        new_chat.click(lambda: (Chat(), [], "", ""), outputs=[chat_state, chatbot, transcripts, notice], queue=False)
        poll_status(loader, status)
    return app


def make_responder(loader: ModelLoader, max_bytes: int):
    """The page's answer handler: `respond(message, chat, system_prompt, max_new_tokens, temperature)`."""
    import gradio as gr

    def wait_for_model():
        """Yield the loading status until the model is ready (or failed): the page shows it instead of hanging."""
        while not loader.wait(timeout=STATUS_POLL_SECONDS):
            yield loader.status()

    def respond(message, chat, system_prompt, max_new_tokens, temperature):
        """(box, chatbot, transcripts, notice, chat) updates: the question, then the answer piece by piece."""
        keep = gr.skip()
        for status in wait_for_model():
            yield keep, keep, keep, status, keep
        if not loader.ready:
            yield keep, keep, keep, loader.status(), keep
            return
        message = message or {}
        try:
            chat = add_user_turn(
                chat, message.get("text", ""), message.get("files") or [], loader.pipe.processor, max_bytes
            )
        except DemoInputError as error:
            yield keep, keep, keep, f"⚠ {error}", keep
            return
        yield None, chat.shown, "…", "", chat
        kwargs = generation_kwargs(max_new_tokens, temperature)
        try:
            for partial, transcripts in answer(loader.pipe, chat, system_prompt, kwargs):
                yield keep, partial.shown, format_transcripts(transcripts) or "…", "", partial
        except Exception as error:  # the page gets one line; the log gets the traceback
            logger.exception("Answering failed")
            yield keep, keep, "", f"⚠ The model failed to answer: {error}", keep

    return respond


def chat_column():
    """(chatbot, box, notice): the chat, the question box (text, uploads, microphone) and the notice under it."""
    import gradio as gr

    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=360, feedback_options=None)
    box = gr.MultimodalTextbox(
        sources=["upload", "microphone"],
        file_types=["audio"],
        file_count="multiple",
        placeholder="Attach or record audio, then ask a question about it",
        show_label=False,
        elem_id="question",
    )
    notice = gr.Markdown(elem_id="notice")
    return chatbot, box, notice


def side_column():
    """Whisper's transcripts, "New chat" and the generation settings: (transcripts, new_chat, settings), where
    `settings` are the system prompt, max new tokens and temperature inputs, in `respond`'s order."""
    import gradio as gr

    transcripts = gr.Textbox(
        label="What the model heard (Whisper transcript)",
        interactive=False,
        lines=4,
        elem_id="transcripts",
    )
    new_chat = gr.Button("New chat", elem_id="new-chat")
    system_prompt = gr.Textbox(
        label="System prompt (optional)",
        elem_id="system-prompt",
        placeholder=DEFAULT_SYSTEM_PROMPT,
    )
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        max_new_tokens = gr.Slider(
            1, 1024, value=DEFAULT_MAX_NEW_TOKENS, step=1, label="Max new tokens", elem_id="max-new-tokens"
        )
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature")
    return transcripts, new_chat, [system_prompt, max_new_tokens, temperature]


def poll_status(loader: ModelLoader, status) -> None:
    """Refresh the `status` line every STATUS_POLL_SECONDS until the model is ready (or failed), then stop polling."""
    import gradio as gr

    def refresh_status():
        return loader.status(), gr.Timer(active=not loader.wait(timeout=0))

    timer = gr.Timer(STATUS_POLL_SECONDS)
    timer.tick(refresh_status, outputs=[status, timer], queue=False)


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    default_model = os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL_ID
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"Hub id or local folder (default: ${MODEL_ENV_VAR} or {DEFAULT_MODEL_ID})",
    )
    parser.add_argument("--host", default=None, help="address to serve on (default: Gradio's, 127.0.0.1 locally)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public Gradio link")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest accepted audio file (MB)"
    )
    return parser


def launch(
    model,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    block: bool = True,
):
    """Start loading `model`, serve the page at once; returns the Gradio app (`block=False`: without waiting)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    loader = ModelLoader(model, device=device, dtype=dtype).start()
    app = build_app(loader, max_upload_mb=max_upload_mb)
    app.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE).launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=f"{max_upload_mb:g}mb",
        allowed_paths=[str(EXAMPLES_DIR)],
        prevent_thread_lock=not block,
        footer_links=[],
    )
    return app


def run_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        sys.stderr.write(f"desta-audio: error: {NEEDS_GRADIO}\n")
        return 2
    logging.getLogger("desta_audio").setLevel(logging.INFO)
    launch(args.model, args.host, args.port, args.share, args.device, args.dtype, args.max_upload_mb)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = add_demo_arguments(argparse.ArgumentParser(description="The DeSTA2.5-Audio web demo (Gradio)."))
    return run_demo(parser.parse_args(argv))
