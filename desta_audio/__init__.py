"""desta-audio's tooling: everything a user runs rather than loads from the Hub.

- `training`: the TRL `SFTTrainer` set-up and the audio collator behind `train_sft.py`;
- `data`: the self-generated dataset builder behind `build_dataset.py` (seed descriptions, sources, engines, store);
- `evaluation`: benchmark runs and scoring, the knowledge-retention check, the smoke QA set;
- `hub`: model cards, publishing and conversion of the authors' release;
- `common`: what several of these share; `testing`: tiny models and audio for tests and benchmarks;
- `cli`: the `desta-audio` command.

The model itself lives in `modeling_desta` and `processing`, the two folders that travel with a checkpoint
as remote code. Imports point one way: modeling_desta <- processing <- desta_audio <- scripts.
"""
