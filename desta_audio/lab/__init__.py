"""The lab: labelled clips whose attributes are known, deterministically from a seed (espeak-ng speech, sox tones,
noise and silence), with a metadata CSV for `build_dataset.py`, the labels recipe's training JSONL, the DeSTA recipe's
instruction pool, and the hearing probe (`desta-audio eval --benchmark hearing`). See docs/lab.md.

    desta-audio lab OUT [--train-clips 600] [--probe-clips 240] [--seed 0] [--jobs 2]
"""

from .generate import ATTRIBUTE_COLUMNS, DEFAULT_CLIPS, make_lab, write_split

__all__ = ["ATTRIBUTE_COLUMNS", "DEFAULT_CLIPS", "make_lab", "write_split"]
