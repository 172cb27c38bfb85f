"""Run a script in a fresh interpreter that cannot import the project, as a Hub user without it would."""

import os
import subprocess
import sys
import textwrap

BLOCK_PROJECT_IMPORTS = textwrap.dedent(
    """
    import importlib.abc, sys
    class _BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_desta", "processing", "desta_audio"):
                raise ImportError(f"the project package {name} must not be importable here")
            return None
    sys.meta_path.insert(0, _BlockProject())
    """
)


def run_isolated(script: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` with `python -I` (no PYTHONPATH, no user site) in `cwd`, the project blocked, offline."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-I", "-c", BLOCK_PROJECT_IMPORTS + textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result
