"""The API side imports no torch: the psi part names, PsiConfig and the job's schema (the SDK's JobSpec)
come from torch-free modules."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["service.schemas", "service.job_schemas", "service.job_config", "service.api.main"])
def test_importing_the_api_side_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
