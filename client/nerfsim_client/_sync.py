"""The blocking client: performs the operations of :mod:`nerfsim_client._core` with
``httpx.Client`` and ``time.sleep``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import httpx

from nerfsim_client._core import (
    Call,
    Close,
    Emit,
    Operation,
    Operations,
    Read,
    Sleep,
    default_headers,
    resolve_api_key,
)
from nerfsim_client._retry import RetryPolicy
from nerfsim_client.models import Asset, Backgrounds, Event, JobData, Preset, Target, Weights
from nerfsim_client.spec import JobSpec, job_spec


class _Driver:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def run(self, operation: Operation) -> Any:
        result: List[Any] = []
        for item in self.iterate(operation, result):
            raise RuntimeError(f"operation emitted {item!r} where none was expected")
        return result[0]

    def iterate(self, operation: Operation, result: Optional[List[Any]] = None) -> Iterator[Any]:
        """Perform ``operation``'s effects; yield what it emits; put its return value in ``result``."""
        streams: Dict[httpx.Response, Iterator[bytes]] = {}
        value: Any = None
        error: Optional[BaseException] = None
        try:
            while True:
                try:
                    effect = operation.throw(error) if error is not None else operation.send(value)
                except StopIteration as stop:
                    if result is not None:
                        result.append(stop.value)
                    return
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    value = self._perform(effect, streams)
                except httpx.TransportError as transport_error:
                    error = transport_error
        finally:
            operation.close()
            for response in streams:
                response.close()

    def _perform(self, effect: Any, streams: Dict[httpx.Response, Iterator[bytes]]) -> Any:
        if isinstance(effect, Call):
            handle = open(effect.upload, "rb") if effect.upload is not None else None
            try:
                request = self.http.build_request(
                    effect.method, effect.path, params=effect.params, json=effect.json, data=effect.form,
                    files={"file": (effect.upload_name, handle)} if handle is not None else None,
                    headers=effect.headers, timeout=effect.timeout)
                response = self.http.send(request, stream=effect.stream)
            finally:
                if handle is not None:
                    handle.close()
            if effect.stream:
                streams[response] = response.iter_bytes()
            return response
        if isinstance(effect, Read):
            return next(streams[effect.response], b"")
        if isinstance(effect, Close):
            effect.response.close()
            streams.pop(effect.response, None)
            return None
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        raise TypeError(f"unknown effect {effect!r}")


class Job(JobData):
    """A job of the service, with the calls that act on it (the record is as of the last
    call: :meth:`refresh` reads it again)."""

    def __init__(self, data: Dict[str, Any], client: "Client") -> None:
        super().__init__(data)
        self._client = client

    def refresh(self) -> "Job":
        self.data = self._client._run(self._client._ops.json(Call("GET", f"/v1/jobs/{self.id}")))
        return self

    def wait(self, timeout: Optional[float] = None, progress: Optional[bool] = None) -> "Job":
        """Block until the job ends, showing its progress (one bar); returns it. Raises
        :class:`~nerfsim_client.JobFailedError` if it failed, :class:`~nerfsim_client.WaitTimeout`
        after ``timeout`` seconds (the job keeps running)."""
        self.data = self._client._run(self._client._ops.wait(self.id, timeout, progress))
        return self

    def events(self, last_event_id: Optional[str] = None) -> Iterator[Event]:
        """The job's server-sent events from the first (or after ``last_event_id``) to its
        final status; a broken connection is resumed where it stopped."""
        return self._client._driver.iterate(self._client._ops.events(self.id, last_event_id))

    def download(self, kind: str, path: Union[str, Path] = ".", progress: Optional[bool] = None) -> Path:
        """Download artifact ``kind`` (``dataset``, ``detector``, ``best_loop_detector``,
        ``report``, ``psi``, ``config``, ``samples``, ``plots``, or the file name) to ``path``
        (a file, or a folder to put it in); resumes an interrupted download. Returns the file."""
        return self._client._run(self._client._ops.download(self.id, kind, path, progress))

    def cancel(self) -> "Job":
        self.data = self._client._run(self._client._ops.json(Call("POST", f"/v1/jobs/{self.id}/cancel")))
        return self

    def retry(self) -> "Job":
        """Run a failed or cancelled job again (it resumes from its checkpoint); a job in any
        other state raises :class:`~nerfsim_client.ConflictError`."""
        self.data = self._client._run(self._client._ops.json(Call("POST", f"/v1/jobs/{self.id}/retry")))
        return self

    def delete(self) -> None:
        self._client._run(self._client._ops.json(Call("DELETE", f"/v1/jobs/{self.id}")))


class Client:
    """The nerfsim API with one API key (blocking calls).

    >>> client = Client("http://localhost:8000", api_key="nsk_...")
    >>> asset = client.upload_asset("cracker_box/", name="cracker_box", kind="nerfsim")

    Failed calls are retried (429, 5xx, broken connections) per ``retry``; errors are the
    typed exceptions of :mod:`nerfsim_client.errors`. ``progress`` turns the progress bars of
    :meth:`Job.wait` and :meth:`Job.download` on or off by default.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None, *, retry: Optional[RetryPolicy] = None,
                 progress: bool = True, timeout: float = 60.0) -> None:
        self._http = httpx.Client(base_url=base_url, headers=default_headers(resolve_api_key(api_key)),
                                  timeout=timeout)
        self._driver = _Driver(self._http)
        self._ops = Operations(retry or RetryPolicy(), progress)

    def _run(self, operation: Operation) -> Any:
        return self._driver.run(operation)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- assets

    def upload_asset(self, path: Union[str, Path], name: str, kind: str = "nerfsim",
                     build: Optional[Dict[str, Any]] = None) -> Asset:
        """Upload an object: a zip/tar archive or a folder (zipped on the fly), or a splat's
        ``.ply``. ``kind``: ``nerfsim`` (ready at once), ``nerfstudio``, ``posed-images``,
        ``mesh`` or ``splat`` (built by a worker; see :meth:`wait_asset`). ``build``: the
        service's AssetBuild settings, e.g. ``{"representation": "splat"}`` to train a splat
        from a mesh or posed images or bake one from a NeRF, ``{"up_axis": "z", "scale": 0.01}``
        for a mesh or splat file."""
        return Asset.from_json(self._run(self._ops.upload_asset(Path(path), name, kind, build)))

    def wait_asset(self, asset: Union[Asset, str], timeout: Optional[float] = None, poll_s: float = 2.0) -> Asset:
        """Wait until an asset is built; raises :class:`~nerfsim_client.AssetBuildError` if its build failed."""
        return Asset.from_json(self._run(self._ops.wait_asset(getattr(asset, "id", asset), timeout, poll_s)))

    def get_asset(self, asset_id: str) -> Asset:
        return Asset.from_json(self._run(self._ops.json(Call("GET", f"/v1/assets/{asset_id}"))))

    def list_assets(self, *, kind: Optional[str] = None, status: Optional[str] = None, offset: int = 0,
                    limit: int = 50) -> List[Asset]:
        page = self._run(self._ops.listing("/v1/assets", offset, limit, {"kind": kind, "status": status}))
        return [Asset.from_json(a) for a in page]

    def delete_asset(self, asset: Union[Asset, str]) -> None:
        self._run(self._ops.json(Call("DELETE", f"/v1/assets/{getattr(asset, 'id', asset)}")))

    # ---------------------------------------------------------------- targets

    def upload_target(self, path: Union[str, Path], name: str, role: str = "validation",
                      format: Optional[str] = None) -> Target:
        """Upload a labelled set (COCO or YOLO; archive or folder). ``role``: ``validation``
        (drives the loop), ``test`` (final metrics) or ``both``."""
        return Target.from_json(self._run(self._ops.upload_target(Path(path), name, role, format)))

    def get_target(self, target_id: str) -> Target:
        return Target.from_json(self._run(self._ops.json(Call("GET", f"/v1/targets/{target_id}"))))

    def list_targets(self, *, role: Optional[str] = None, offset: int = 0, limit: int = 50) -> List[Target]:
        return [Target.from_json(t) for t in self._run(self._ops.listing("/v1/targets", offset, limit, {"role": role}))]

    def delete_target(self, target: Union[Target, str]) -> None:
        self._run(self._ops.json(Call("DELETE", f"/v1/targets/{getattr(target, 'id', target)}")))

    # ---------------------------------------------------------------- weights

    def upload_weights(self, path: Union[str, Path], name: str) -> Weights:
        """Upload an Ultralytics YOLO detection checkpoint (``.pt``) for jobs' detectors to
        start from (``create_job(..., detector_weights=...)``). The service reads it without
        running its code and refuses anything but a YOLOv8 / YOLO11 / YOLO26 detection model (422)."""
        return Weights.from_json(self._run(self._ops.upload_weights(Path(path), name)))

    def get_weights(self, weights_id: str) -> Weights:
        return Weights.from_json(self._run(self._ops.json(Call("GET", f"/v1/weights/{weights_id}"))))

    def list_weights(self, *, offset: int = 0, limit: int = 50) -> List[Weights]:
        return [Weights.from_json(w) for w in self._run(self._ops.listing("/v1/weights", offset, limit, {}))]

    def delete_weights(self, weights: Union[Weights, str]) -> None:
        self._run(self._ops.json(Call("DELETE", f"/v1/weights/{getattr(weights, 'id', weights)}")))

    # ---------------------------------------------------------------- backgrounds

    def upload_backgrounds(self, path: Union[str, Path], name: str) -> Backgrounds:
        """Upload background photos for jobs' scenes (``create_job(..., backgrounds=[...])``):
        a folder (zipped on the fly), a zip/tar archive of photos, or one photo. The service
        decodes every photo and refuses (422) a set with an unreadable one or with none."""
        return Backgrounds.from_json(self._run(self._ops.upload_backgrounds(Path(path), name)))

    def get_backgrounds(self, backgrounds_id: str) -> Backgrounds:
        return Backgrounds.from_json(self._run(self._ops.json(Call("GET", f"/v1/backgrounds/{backgrounds_id}"))))

    def list_backgrounds(self, *, offset: int = 0, limit: int = 50) -> List[Backgrounds]:
        page = self._run(self._ops.listing("/v1/backgrounds", offset, limit, {}))
        return [Backgrounds.from_json(b) for b in page]

    def delete_backgrounds(self, backgrounds: Union[Backgrounds, str]) -> None:
        self._run(self._ops.json(Call("DELETE", f"/v1/backgrounds/{getattr(backgrounds, 'id', backgrounds)}")))

    # ---------------------------------------------------------------- jobs

    def create_job(self, spec: Union[JobSpec, Dict[str, Any]], *, preset: Union[Preset, str, None] = None,
                   idempotency_key: Optional[str] = None) -> Job:
        """Create a closed-loop job from ``spec`` (a :class:`JobSpec`, or a dict of its shape,
        checked here; record objects such as an :class:`Asset` may stand for their ids),
        running method ``preset`` (:meth:`list_presets`) when given, else the spec's preset,
        else the service's default. An idempotency key is sent (a new one unless given), so a
        retried call never creates a second job."""
        return Job(self._run(self._ops.create_job(job_spec(spec, preset), idempotency_key)), self)

    def list_presets(self) -> List[Preset]:
        """The method presets a job can name, the service's default first."""
        return [Preset.from_json(p) for p in self._run(self._ops.json(Call("GET", "/v1/presets")))["data"]]

    def get_job(self, job_id: str) -> Job:
        return Job(self._run(self._ops.json(Call("GET", f"/v1/jobs/{job_id}"))), self)

    def retry_job(self, job: Union[Job, str]) -> Job:
        """See :meth:`Job.retry`."""
        return Job(self._run(self._ops.json(Call("POST", f"/v1/jobs/{getattr(job, 'id', job)}/retry"))), self)

    def list_jobs(self, *, status: Optional[str] = None, asset: Union[Asset, str, None] = None,
                  target: Union[Target, str, None] = None, offset: int = 0, limit: int = 50) -> List[Job]:
        """Jobs, newest first."""
        page = self._run(self._ops.listing("/v1/jobs", offset, limit, {"status": status, "asset": asset, "target": target}))
        return [Job(j, self) for j in page]
