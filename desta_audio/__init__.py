"""desta-audio's tooling: everything a user runs rather than loads from the Hub.

- `training`: the TRL `SFTTrainer` set-up and the audio collator behind `train_sft.py`;
- `data`: the self-generated dataset builder behind `build_dataset.py` (seed descriptions, sources, engines, store);
- `evaluation`: benchmark runs and scoring, the knowledge-retention check, the smoke QA set;
- `hub`: model cards, publishing and conversion of the authors' release;
- shared by several of these, one idea a module: `runtime` (device, dtype, pipeline loading, streamed answers),
  `files` (crash-safe JSONL, atomic writes, text/JSON/JSONL input read with errors naming file and line),
  `dataset_loading` (datasets from anywhere, audio paths), `errors`
  (how a command line ends an error); `testing`: tiny models and audio for tests and benchmarks;
- `cli`: the `desta-audio` command.

The model itself lives in `modeling_desta` and `processing`, the two sibling folders that travel with a checkpoint
as remote code. Imports point one way: the remote-code set <- desta_audio <- scripts.
"""
