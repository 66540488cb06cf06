"""The API side imports no torch: the psi part names and PsiConfig come from torch-free modules."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["service.schemas", "service.job_fields", "service.api.main"])
def test_importing_the_api_side_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_psi_overrides_are_checked_by_psi_config_without_torch() -> None:
    code = ("import sys\n"
            "from pydantic import ValidationError\n"
            "from service.job_fields import PsiOverrides\n"
            "try:\n"
            "    PsiOverrides(elevation_median_deg=80.0)\n"
            "except ValidationError as error:\n"
            "    assert 'elevation_median_deg' in str(error), error\n"
            "else:\n"
            "    raise AssertionError('accepted')\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
