"""The web demo: a Gradio page over the `audio-text-to-text` pipeline (`app.py`, `desta-audio demo`).

`session` holds the handlers (no Gradio), `ui` the page and launcher (Gradio imported when the page is built),
`examples` the shipped example clips.
"""

from .examples import EXAMPLES_DIR, example_inputs, make_example_clips
from .session import (
    DEFAULT_MODEL_ID,
    EMPTY_QUESTION,
    NO_AUDIO,
    AnswerStream,
    Chat,
    DemoInputError,
    ModelLoader,
    add_user_turn,
    answer,
    generation_kwargs,
    load_clip,
)
from .ui import CONCURRENCY_LIMIT, QUEUE_MAX_SIZE, add_demo_arguments, build_app, launch, main, run_demo

__all__ = [
    "CONCURRENCY_LIMIT",
    "DEFAULT_MODEL_ID",
    "EMPTY_QUESTION",
    "EXAMPLES_DIR",
    "NO_AUDIO",
    "QUEUE_MAX_SIZE",
    "AnswerStream",
    "Chat",
    "DemoInputError",
    "ModelLoader",
    "add_demo_arguments",
    "add_user_turn",
    "answer",
    "build_app",
    "example_inputs",
    "generation_kwargs",
    "launch",
    "load_clip",
    "main",
    "make_example_clips",
    "run_demo",
]
