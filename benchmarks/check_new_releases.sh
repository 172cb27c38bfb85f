#!/usr/bin/env bash
# Drift check for maintainers: install the NEWEST transformers / TRL / datasets / accelerate / PEFT from PyPI into a
# scratch venv and run the remote-code set's compat suite plus transformers' own common tests there, so a new release
# is checked in one command before users meet it. Prints one JSON line: the versions tried and pytest's exit codes.
#   bash benchmarks/check_new_releases.sh [extra pytest args]
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q torch==2.13.0 torchcodec==0.13.0 >&2
"$py" -m pip install -q --upgrade -e "$repo[dev]" transformers trl datasets accelerate peft >&2
"$py" -m desta_audio.testing.upstream_tests >&2
cd "$repo"
"$py" -m pytest -q -p no:cacheprovider -m compat "$@" >&2
compat=$?
"$py" -m pytest -q -p no:cacheprovider tests/test_upstream_common.py "$@" >&2
upstream=$?
"$py" - "$compat" "$upstream" <<'PY'
import json
import sys
from importlib.metadata import version

names = ["transformers", "trl", "datasets", "accelerate", "peft", "torch"]
report = {"versions": {name: version(name) for name in names}}
report.update(compat_exit=int(sys.argv[1]), upstream_common_exit=int(sys.argv[2]))
print(json.dumps(report))
PY
[ "$compat" -eq 0 ] && [ "$upstream" -eq 0 ]
