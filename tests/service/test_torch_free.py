"""The API side imports no torch: the psi part names, PsiConfig and the loop's config checks come from
torch-free modules."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["service.schemas", "service.job_schemas", "service.job_config", "service.api.main"])
def test_importing_the_api_side_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_job_spec_is_checked_by_the_loops_rules_without_torch() -> None:
    code = ("import sys\n"
            "from nerfsim_client import JobSpec\n"
            "from service.errors import InvalidField\n"
            "from service.job_config import check_spec\n"
            "base = {'scene': {'assets': ['a']}, 'targets': {'val': 't'}}\n"
            "for change, field in (({'psi': {'initial': {'elevation_median_deg': 80.0}}}, 'psi.initial'),\n"
            "                      ({'psi': {'learnable': ['hue']}}, 'learnable')):\n"
            "    try:\n"
            "        check_spec(JobSpec.model_validate({**base, **change}))\n"
            "    except InvalidField as error:\n"
            "        assert field in str(error), error\n"
            "    else:\n"
            "        raise AssertionError('accepted')\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
