"""What the API answers, as small read-only objects (the full JSON stays in ``data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nerfsim_client.spec import JobSpec

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Asset:
    """An object of the scene (one detection class)."""

    id: str
    name: str
    kind: str
    status: str
    """``building``, ``ready`` or ``failed``."""
    error: Optional[str]
    data: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Asset":
        return cls(data["id"], data["name"], data["kind"], data["status"], data.get("error"), data)


@dataclass(frozen=True)
class Target:
    """A labelled set of real images (validation drives the loop, test measures the result)."""

    id: str
    name: str
    role: str
    format: str
    num_images: int
    class_names: List[str]
    data: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Target":
        return cls(data["id"], data["name"], data["role"], data["format"], data["num_images"],
                   list(data["class_names"]), data)


@dataclass(frozen=True)
class Weights:
    """An uploaded YOLO detection checkpoint a job's detector can start from."""

    id: str
    name: str
    class_names: List[str]
    parameters: int
    size_bytes: int
    data: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Weights":
        return cls(data["id"], data["name"], list(data["class_names"]), data["parameters"], data["size_bytes"], data)


@dataclass(frozen=True)
class Backgrounds:
    """An uploaded set of background photographs a job's scenes are composed on."""

    id: str
    name: str
    num_images: int
    image_sizes: Dict[str, int]
    """How many photos have each size: ``"WIDTHxHEIGHT"`` -> count."""
    size_bytes: int
    data: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Backgrounds":
        return cls(data["id"], data["name"], data["num_images"], dict(data["image_sizes"]), data["size_bytes"], data)


@dataclass(frozen=True)
class Preset:
    """A named method a job can run (``create_job(spec, preset=name)``)."""

    name: str
    description: str
    settings: Dict[str, Any]
    """The loop settings it sets; a job's explicit settings win over them."""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Preset":
        return cls(data["name"], data["description"], dict(data["settings"]))


@dataclass(frozen=True)
class BaselineComparison:
    """A finished job's final detector against its uniform baseline (the same detector and
    training on renders from the starting psi), on the test set or on held-out validation
    photos. mAP50-95 unless named otherwise; ``difference`` = final - baseline."""

    final_map50_95: float
    baseline_map50_95: float
    difference: float
    difference_std: Optional[float]
    """Standard deviation of the difference over a bootstrap of the test images."""
    difference_low: Optional[float]
    """2.5 % quantile of the bootstrap (the interval's lower end)."""
    difference_high: Optional[float]
    """97.5 % quantile of the bootstrap."""

    @classmethod
    def from_metrics(cls, metrics: Dict[str, Any]) -> Optional["BaselineComparison"]:
        """From the job's last progress report (stage ``done``); None without a baseline."""
        if "baseline_test_map50_95" not in metrics:
            return None
        return cls(metrics["test_map50_95"], metrics["baseline_test_map50_95"], metrics["difference_map50_95"],
                   metrics.get("difference_map50_95_std"), metrics.get("difference_map50_95_low"),
                   metrics.get("difference_map50_95_high"))


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: ``status`` (``data["status"]``) or ``progress``
    (``data["stage"]``, ``iteration``, ``total``, ``metrics``, ``psi``, ``samples``)."""

    event: str
    data: Dict[str, Any]
    id: Optional[str] = None
    """Position in the job's stream (resume with ``events(last_event_id=...)``)."""

    @property
    def is_final(self) -> bool:
        """The job's last event: its final status."""
        return self.event == "status" and self.data.get("status") in TERMINAL_STATUSES


class JobData:
    """Fields of a job record (shared by :class:`~nerfsim_client.Job` and
    :class:`~nerfsim_client.AsyncJob`)."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = data

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self.data["status"]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def error(self) -> Optional[str]:
        return self.data.get("error")

    @property
    def progress(self) -> Optional[Dict[str, Any]]:
        """The latest progress report (stage, iteration, total, metrics, psi, samples)."""
        return self.data.get("progress")

    @property
    def history(self) -> List[Dict[str, Any]]:
        """Metrics of each finished outer iteration."""
        return self.data.get("history", [])

    @property
    def spec(self) -> JobSpec:
        """What the job was asked to do (send it again to run the same job anew)."""
        return JobSpec.model_validate(self.data["spec"])

    @property
    def preset(self) -> Optional[str]:
        """The method preset the job runs (a service before 2026-12 answered it in the spec alone)."""
        return self.data.get("preset") or self.data["spec"].get("preset")

    @property
    def baseline(self) -> Optional[BaselineComparison]:
        """The final detector against the uniform baseline, once the job succeeded (None
        before, or when the job had no baseline: switched off, a uniform job, too few photos;
        the report artifact says why)."""
        progress = self.progress or {}
        return BaselineComparison.from_metrics(progress.get("metrics") or {}) if progress.get("stage") == "done" else None

    @property
    def artifacts(self) -> Dict[str, str]:
        """Artifact name -> download path (filled when the job ends)."""
        return self.data.get("artifacts", {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.status!r})"
