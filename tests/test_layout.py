"""The house plan: modeling_desta <- processing <- desta_audio <- scripts, no cycles, a wheel that carries its data."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Each package may import the packages listed for it, and nothing else of this project.
ALLOWED_IMPORTS = {
    "modeling_desta": set(),
    "processing": set(),
    "desta_audio": {"modeling_desta", "processing"},
}
PROJECT_PACKAGES = set(ALLOWED_IMPORTS)
REMOTE_CODE_PACKAGES = ("modeling_desta", "processing")
THIRD_PARTY_ALLOWED_IN_REMOTE_CODE = {"torch", "transformers", "numpy"}
# Audio decoders (the ones transformers' own audio loading uses), imported only where a file is decoded.
LAZY_AUDIO_BACKENDS = {"torchcodec", "soundfile", "soxr"}
# Guard function length, not file length (a file cap once split one class over three files through mixins).
MAX_FUNCTION_BODY_LINES = 60
# Files that live beside the repository on the developers' machines, never inside it (spelled in pieces so that
# this file does not name them itself).
OUTSIDE_REFERENCES = ("../" + "shared", "DESIGN" + ".md")


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def imported_roots(path: Path) -> list[tuple[int, str, bool]]:
    """(line, top-level package, inside a function) of every absolute import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    function_lines = {
        line
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for line in range(node.lineno, node.end_lineno + 1)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0], node.lineno in function_lines) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0], node.lineno in function_lines))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_no_import_points_up_the_house(package):
    upward = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {root}"
        for path in python_files(package)
        for line, root, _ in imported_roots(path)
        if root in PROJECT_PACKAGES - {package} - ALLOWED_IMPORTS[package]
    ]
    assert not upward, "imports against the direction modeling_desta <- processing <- desta_audio:\n" + "\n".join(
        upward
    )


@pytest.mark.parametrize("package", REMOTE_CODE_PACKAGES)
def test_remote_code_set_imports_only_torch_transformers_stdlib_and_siblings(package):
    stdlib = set(sys.stdlib_module_names)
    foreign = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {root}"
        for path in python_files(package)
        for line, root, in_function in imported_roots(path)
        if root not in stdlib
        and root not in THIRD_PARTY_ALLOWED_IN_REMOTE_CODE
        and not (in_function and root in LAZY_AUDIO_BACKENDS)
    ]
    assert not foreign, "\n".join(foreign)


def test_project_imports_are_module_level():
    """Function-level imports of our own packages are how cycles hide; none are needed when arrows point one way."""
    hidden = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {root} inside a function"
        for package in ALLOWED_IMPORTS
        for path in python_files(package)
        for line, root, in_function in imported_roots(path)
        if in_function and root in PROJECT_PACKAGES
    ]
    assert not hidden, "\n".join(hidden)


@pytest.mark.slow
def test_remote_code_loads_with_the_tooling_package_blocked():
    script = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "desta_audio":
            raise ImportError("desta_audio is blocked")
sys.meta_path.insert(0, Block())
import modeling_desta, processing
from transformers import AutoConfig
assert AutoConfig.for_model("desta").__class__.__name__ == "DestaConfig"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = function.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return function.end_lineno - body[0].lineno + 1


def test_no_library_function_is_past_the_length_limit():
    long_functions = [
        f"{path.relative_to(REPO_ROOT)}:{node.name}: {_body_lines(node)} lines"
        for package in ALLOWED_IMPORTS
        for path in python_files(package)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_BODY_LINES
    ]
    assert not long_functions, "\n".join(long_functions)


def test_no_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.split():
        path = REPO_ROOT / name
        if path.suffix not in {".py", ".md", ".toml", ".yaml", ".yml", ".txt"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name} names {needle}" for needle in OUTSIDE_REFERENCES if needle in text]
    assert not offenders, "\n".join(offenders)


def test_one_model_card_template_shipped_with_the_package():
    from desta_audio.hub.card import MODEL_CARD_TEMPLATE

    assert MODEL_CARD_TEMPLATE.read_text() == (REPO_ROOT / "model_card.md").read_text()


def test_scoring_saved_predictions_loads_neither_torch_nor_the_pipeline():
    """Re-scoring is plain Python: `desta_audio.evaluation.scoring` (and the shared `files`) import no torch, no
    transformers and no remote-code set, so `--rescore` runs anywhere."""
    script = (
        "import sys\nimport desta_audio.evaluation.scoring\n"
        "heavy = [m for m in ('torch', 'transformers', 'processing', 'modeling_desta') if m in sys.modules]\n"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


def test_no_library_file_is_named_for_nothing():
    vague = {"common.py", "setup.py", "utils.py", "helpers.py", "misc.py"}
    named = [str(path.relative_to(REPO_ROOT)) for package in ALLOWED_IMPORTS for path in python_files(package)]
    assert not [name for name in named if Path(name).name in vague], named
