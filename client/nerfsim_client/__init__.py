"""Python SDK of the nerfsim API (torch-free): upload objects and labelled target sets, run
closed-loop jobs, follow them live, download their dataset, detector and report.

>>> from nerfsim_client import Client
>>> with Client("http://localhost:8000", api_key="nsk_...") as client:
...     asset = client.upload_asset("cracker_box/", name="cracker_box")
...     real = client.upload_target("real_photos.zip", name="shelf", role="both")
...     spec = JobSpec(scene={"assets": [asset.id]}, targets={"val": real.id, "test": real.id})
...     job = client.create_job(spec, preset="neural-sim").wait()
...     job.download("dataset", "out/")

:class:`AsyncClient` offers the same calls for asyncio; both share one implementation
(:mod:`nerfsim_client._core`).
"""

from nerfsim_client._async import AsyncClient, AsyncJob
from nerfsim_client._retry import RetryPolicy
from nerfsim_client._sync import Client, Job
from nerfsim_client._version import __version__
from nerfsim_client.errors import (
    APIConnectionError,
    APIError,
    AssetBuildError,
    AuthenticationError,
    ConflictError,
    JobFailedError,
    NerfsimError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
    WaitTimeout,
)
from nerfsim_client.models import Asset, Backgrounds, BaselineComparison, Event, Preset, Target, Weights
from nerfsim_client.spec import (
    BudgetSection,
    DetectorSection,
    FinalSection,
    FinalTrainerOverrides,
    HypergradientSection,
    JobSpec,
    OraclePsi,
    OuterSection,
    PsiOverrides,
    PsiSection,
    SceneSection,
    TargetsSection,
)

__all__ = [
    "APIConnectionError", "APIError", "Asset", "AssetBuildError", "AsyncClient", "AsyncJob", "AuthenticationError",
    "Backgrounds", "BaselineComparison", "BudgetSection",
    "Client", "ConflictError", "DetectorSection", "Event", "FinalSection", "FinalTrainerOverrides",
    "HypergradientSection", "Job", "JobFailedError", "JobSpec", "NerfsimError", "NotFoundError", "OraclePsi",
    "OuterSection", "PayloadTooLargeError", "PermissionDeniedError", "Preset", "PsiOverrides", "PsiSection",
    "RateLimitError", "RetryPolicy", "SceneSection", "ServerError", "ServiceUnavailableError", "Target",
    "TargetsSection", "ValidationError", "WaitTimeout", "Weights", "__version__",
]
