"""transformers' own common test mixins (`ModelTesterMixin`, `ProcessorTesterMixin`, `ConfigTester`), unpacked
from the transformers sdist on PyPI for the installed version, so `tests/test_upstream_common.py` can run them
against `DestaForConditionalGeneration` and `DestaProcessor` offline.

`python -m desta_audio.testing.upstream_tests` (an install step; the only place that uses the network) downloads
`transformers==<installed version>` as an sdist with pip, keeps its top-level `tests/*.py` and writes stand-ins
for what the sdist does not ship. Layout under the user cache directory (`DESTA_AUDIO_CACHE` overrides it):

    desta-audio/transformers-tests/<version>/                  <- `upstream_tests_dir()`; goes on sys.path
        upstream_transformers_tests/                           <- a package, so the mixins' relative imports work
            __init__.py, test_modeling_common.py, test_processing_common.py, test_configuration_common.py, ...
            generation/test_utils.py                           <- stand-in: empty `GenerationTesterMixin`
            exporters/test_export.py                           <- stand-in: empty `ExportTesterMixin`
            utils/test_configuration_utils.py                  <- stand-in: `config_common_kwargs`
        utils/fetch_hub_objects_for_ci.py                      <- stand-in: `url_to_local_path` (repo-level utils/)
        COMPLETE                                               <- written last: the folder is whole
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path

from ..small.cache import default_cache_dir

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "desta-audio/transformers-tests"
PACKAGE_NAME = "upstream_transformers_tests"
COMPLETE_MARKER = "COMPLETE"
INSTALL_COMMAND = "python -m desta_audio.testing.upstream_tests"

# Modules the sdist lacks (tests/generation/, tests/exporters/, tests/utils/ and the repository's utils/), as
# (path relative to the version folder, source). Each holds only the names the shipped mixins import.
STAND_INS = {
    f"{PACKAGE_NAME}/__init__.py": '"""transformers\' top-level tests/*.py from its sdist (see desta_audio.testing.upstream_tests)."""\n',
    f"{PACKAGE_NAME}/generation/__init__.py": "",
    f"{PACKAGE_NAME}/generation/test_utils.py": '''"""Stand-in: transformers' tests/generation/ is not shipped in its sdist.

`GenerationTesterMixin` is empty here, so no upstream generate() tests run; generation behaviour is covered by the
project's own tests (tests/test_model.py, tests/test_model_contract.py, tests/test_pipeline.py).
"""


class GenerationTesterMixin:
    """Empty stand-in for transformers' generate() test mixin (not in the sdist)."""
''',
    f"{PACKAGE_NAME}/exporters/__init__.py": "",
    f"{PACKAGE_NAME}/exporters/test_export.py": '''"""Stand-in: transformers' tests/exporters/ is not shipped in its sdist; `ExportTesterMixin` is empty here."""


class ExportTesterMixin:
    """Empty stand-in for transformers' export test mixin (not in the sdist)."""
''',
    f"{PACKAGE_NAME}/utils/__init__.py": "",
    f"{PACKAGE_NAME}/utils/test_configuration_utils.py": '''"""Stand-in: transformers' tests/utils/ is not shipped in its sdist.

`config_common_kwargs` as in transformers 5.x's tests/utils/test_configuration_utils.py; test_configuration_common
imports it (`ConfigTester.check_config_arguments_init`, which returns early for composite configs such as DeSTA's).
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
''',
    "utils/fetch_hub_objects_for_ci.py": '''"""Stand-in for the transformers repository's utils/fetch_hub_objects_for_ci.py (not in the sdist), which
test_processing_common imports. Same rule as upstream: a file of that name in the working directory, else the URL
unchanged. Nothing is downloaded; tests that would fetch these URLs are deselected in tests/test_upstream_common.py.
"""

import os


def url_to_local_path(url, return_url_if_not_found=True):
    filename = url.split("/")[-1]
    if not os.path.exists(filename) and return_url_if_not_found:
        return url
    return filename
''',
}


def transformers_version() -> str:
    """The installed transformers version (e.g. `5.25.0`)."""
    return installed_version("transformers")


def upstream_tests_dir(version: str | None = None) -> Path:
    """The cache folder for `version` (default: the installed transformers) that holds the package
    `upstream_transformers_tests` (the sdist's `tests/*.py` plus stand-ins); put it on `sys.path`.

    The folder may not exist yet: `is_complete` says whether `python -m desta_audio.testing.upstream_tests` has
    filled it.
    """
    return default_cache_dir() / CACHE_SUBDIR / (version or transformers_version())


def is_complete(folder: Path) -> bool:
    """True when `folder` was filled entirely (its completion marker is written last)."""
    return (folder / COMPLETE_MARKER).is_file()


def download_sdist(version: str, dest: Path) -> Path:
    """Download the transformers `version` sdist into `dest` with pip (network) and return the archive's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += [f"transformers=={version}", "-d", str(dest)]
    logger.info("Downloading the transformers %s sdist: %s", version, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    archives = sorted(dest.glob(f"transformers-{version}.tar.gz"))
    if not archives:
        raise FileNotFoundError(f"pip download left no transformers-{version}.tar.gz in {dest}")
    return archives[0]


def extract_top_level_tests(archive: Path, version: str, package_dir: Path) -> list[str]:
    """Copy `transformers-<version>/tests/*.py` (top level only) from the sdist `archive` into `package_dir`."""
    prefix = f"transformers-{version}/tests/"
    package_dir.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            relative = member.name[len(prefix) :] if member.name.startswith(prefix) else ""
            if not member.isfile() or not relative.endswith(".py") or "/" in relative:
                continue
            (package_dir / relative).write_bytes(tar.extractfile(member).read())
            names.append(relative)
    if "test_modeling_common.py" not in names:
        raise FileNotFoundError(f"{archive} has no {prefix}test_modeling_common.py")
    return sorted(names)


def write_stand_ins(folder: Path) -> None:
    """Write the modules the sdist lacks (see `STAND_INS`) under `folder`."""
    for relative, source in STAND_INS.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def install(version: str | None = None) -> Path:
    """Fill `upstream_tests_dir(version)` once; a complete folder is left as it is."""
    version = version or transformers_version()
    folder = upstream_tests_dir(version)
    if is_complete(folder):
        logger.info("transformers %s upstream tests already in %s", version, folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{version}-"))
    try:
        with tempfile.TemporaryDirectory() as download_dir:
            archive = download_sdist(version, Path(download_dir))
            names = extract_top_level_tests(archive, version, staging / PACKAGE_NAME)
        write_stand_ins(staging)
        (staging / COMPLETE_MARKER).write_text(f"transformers {version}: {len(names)} files\n")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder from an interrupted run
        try:
            os.replace(staging, folder)
        except OSError:
            if not is_complete(folder):  # else another install finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("transformers %s upstream tests (%d files) in %s", version, len(names), folder)
    return folder


def main() -> None:
    """Install step: `python -m desta_audio.testing.upstream_tests` (uses the network once per version)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    install()


if __name__ == "__main__":
    main()
