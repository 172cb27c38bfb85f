"""The self-generated dataset of the DeSTA recipe: seed descriptions, sources, engines (transformers, vLLM, any
OpenAI-compatible server), the JSONL store, the build, and `build_dataset.py`'s arguments and run (`arguments`)."""

from .arguments import BuildArguments
from .arguments import main as build_main
from .builder import BuildOptions, BuildSummary, build, log_summary
from .descriptions import load_instructions, seed_description
from .engines import ResponseGenerator, TransformersGenerator, VLLMGenerator, WhisperTranscriber
from .engines_openai import EngineError, OpenAIGenerator
from .sources import SourceColumns, dataset_source, folder_source
from .store import BuildLockedError, merge_records

__all__ = [
    "BuildArguments",
    "BuildOptions",
    "BuildSummary",
    "EngineError",
    "OpenAIGenerator",
    "ResponseGenerator",
    "SourceColumns",
    "TransformersGenerator",
    "VLLMGenerator",
    "WhisperTranscriber",
    "build",
    "build_main",
    "dataset_source",
    "folder_source",
    "load_instructions",
    "log_summary",
    "merge_records",
    "BuildLockedError",
    "seed_description",
]
