"""Set-up and commands print nothing about other projects' code: setuptools reads the project's
licence (an SPDX string, PEP 639) without a deprecation warning, and importing nerfsim's
nerfstudio modules prints none of nerfstudio's FutureWarnings."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_setuptools_reads_the_project_without_a_warning() -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools' `project.license` table deprecation included
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"


@pytest.mark.slow
def test_importing_the_nerfstudio_modules_prints_no_future_warning() -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "client")))}
    done = subprocess.run(
        [sys.executable, "-c", "import renderer.object_field, renderer.nerfstudio_asset, renderer.nerfstudio_method"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "FutureWarning" not in done.stderr, done.stderr
