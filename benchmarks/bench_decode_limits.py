#!/usr/bin/env python3
"""Peak memory of decoding "bomb" inputs with and without the `max_seconds` bound; prints JSON.

Bombs: a long silent FLAC made with sox (tiny on disk, huge decoded), the same FLAC with the length in its
header zeroed (so only the incremental bound can stop it), and a 64 KB float32 array declared at sampling_rate=1.
Each case runs in a fresh interpreter; `peak_rss_delta_mb` is its peak RSS minus the RSS after imports.

    python benchmarks/bench_decode_limits.py [--hours 2] [--max-seconds 600] [--unbounded]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

CASE_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
from processing.audio_io import AudioDecodeError, load_audio
kind, source, max_seconds = sys.argv[1], sys.argv[2], None if sys.argv[3] == "none" else float(sys.argv[3])
if kind == "array":
    source = {"array": np.zeros(16000, np.float32), "sampling_rate": 1}  # 64 KB declaring 16000 s
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    outcome = f"decoded {load_audio(source, max_seconds=max_seconds).size} samples"
except AudioDecodeError as error:
    outcome = f"refused: {error}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "peak_rss_delta_mb": round((peak - base) / 1024, 1),
                  "seconds": round(time.perf_counter() - started, 2)}))
"""


def strip_flac_length(source: Path, target: Path) -> Path:
    """A copy of a FLAC whose STREAMINFO says "total samples unknown"."""
    data = bytearray(source.read_bytes())
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    target.write_bytes(data)
    return target


def run_case(kind: str, source: str, max_seconds: float | None) -> dict:
    command = [sys.executable, "-c", CASE_SCRIPT, kind, source, "none" if max_seconds is None else str(max_seconds)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0, help="length of the silent FLAC bomb (default: 2)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="the bound (processor default: 600)")
    parser.add_argument("--unbounded", action="store_true", help="also decode each bomb with no bound (before)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bomb = Path(scratch) / "bomb.flac"
        seconds = str(int(args.hours * 3600))
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(bomb), "trim", "0", seconds], check=True)
        no_length = strip_flac_length(bomb, Path(scratch) / "bomb_no_length.flac")
        cases = {
            "flac_bomb": ("file", str(bomb)),
            "flac_bomb_no_length_in_header": ("file", str(no_length)),
            "array_at_sampling_rate_1": ("array", "-"),
        }
        report = {"bomb_file_bytes": bomb.stat().st_size, "bomb_seconds": float(seconds), "cases": {}}
        for name, (kind, source) in cases.items():
            report["cases"][name] = {"bounded": run_case(kind, source, args.max_seconds)}
            if args.unbounded:
                report["cases"][name]["unbounded"] = run_case(kind, source, None)
    report["max_seconds"] = args.max_seconds
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
