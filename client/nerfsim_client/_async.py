"""The asyncio client: performs the operations of :mod:`nerfsim_client._core` with
``httpx.AsyncClient`` and ``asyncio.sleep``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Union

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
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def run(self, operation: Operation) -> Any:
        result: List[Any] = []
        async for item in self.iterate(operation, result):
            raise RuntimeError(f"operation emitted {item!r} where none was expected")
        return result[0]

    async def iterate(self, operation: Operation, result: Optional[List[Any]] = None) -> AsyncIterator[Any]:
        """Perform ``operation``'s effects; yield what it emits; put its return value in ``result``."""
        streams: Dict[httpx.Response, AsyncIterator[bytes]] = {}
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
                    value = await self._perform(effect, streams)
                except httpx.TransportError as transport_error:
                    error = transport_error
        finally:
            operation.close()
            for response in streams:
                await response.aclose()

    async def _perform(self, effect: Any, streams: Dict[httpx.Response, AsyncIterator[bytes]]) -> Any:
        if isinstance(effect, Call):
            handle = open(effect.upload, "rb") if effect.upload is not None else None
            try:
                request = self.http.build_request(
                    effect.method, effect.path, params=effect.params, json=effect.json, data=effect.form,
                    files={"file": (effect.upload_name, handle)} if handle is not None else None,
                    headers=effect.headers, timeout=effect.timeout)
                response = await self.http.send(request, stream=effect.stream)
            finally:
                if handle is not None:
                    handle.close()
            if effect.stream:
                streams[response] = response.aiter_bytes()
            return response
        if isinstance(effect, Read):
            return await anext(streams[effect.response], b"")
        if isinstance(effect, Close):
            await effect.response.aclose()
            streams.pop(effect.response, None)
            return None
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        raise TypeError(f"unknown effect {effect!r}")


class AsyncJob(JobData):
    """A job of the service, with the calls that act on it (like :class:`~nerfsim_client.Job`, awaited)."""

    def __init__(self, data: Dict[str, Any], client: "AsyncClient") -> None:
        super().__init__(data)
        self._client = client

    async def refresh(self) -> "AsyncJob":
        self.data = await self._client._run(self._client._ops.json(Call("GET", f"/v1/jobs/{self.id}")))
        return self

    async def wait(self, timeout: Optional[float] = None, progress: Optional[bool] = None) -> "AsyncJob":
        """See :meth:`Job.wait`."""
        self.data = await self._client._run(self._client._ops.wait(self.id, timeout, progress))
        return self

    def events(self, last_event_id: Optional[str] = None) -> AsyncIterator[Event]:
        """See :meth:`Job.events` (use ``contextlib.aclosing`` to stop early and release the connection at once)."""
        return self._client._driver.iterate(self._client._ops.events(self.id, last_event_id))

    async def download(self, kind: str, path: Union[str, Path] = ".", progress: Optional[bool] = None) -> Path:
        """See :meth:`Job.download`."""
        return await self._client._run(self._client._ops.download(self.id, kind, path, progress))

    async def cancel(self) -> "AsyncJob":
        self.data = await self._client._run(self._client._ops.json(Call("POST", f"/v1/jobs/{self.id}/cancel")))
        return self

    async def retry(self) -> "AsyncJob":
        """See :meth:`Job.retry`."""
        self.data = await self._client._run(self._client._ops.json(Call("POST", f"/v1/jobs/{self.id}/retry")))
        return self

    async def delete(self) -> None:
        await self._client._run(self._client._ops.json(Call("DELETE", f"/v1/jobs/{self.id}")))


class AsyncClient:
    """The nerfsim API with one API key, for asyncio (the calls of :class:`~nerfsim_client.Client`, awaited)."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, *, retry: Optional[RetryPolicy] = None,
                 progress: bool = True, timeout: float = 60.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=default_headers(resolve_api_key(api_key)),
                                       timeout=timeout)
        self._driver = _Driver(self._http)
        self._ops = Operations(retry or RetryPolicy(), progress)

    async def _run(self, operation: Operation) -> Any:
        return await self._driver.run(operation)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def upload_asset(self, path: Union[str, Path], name: str, kind: str = "nerfsim",
                           build: Optional[Dict[str, Any]] = None) -> Asset:
        return Asset.from_json(await self._run(self._ops.upload_asset(Path(path), name, kind, build)))

    async def wait_asset(self, asset: Union[Asset, str], timeout: Optional[float] = None, poll_s: float = 2.0) -> Asset:
        return Asset.from_json(await self._run(self._ops.wait_asset(getattr(asset, "id", asset), timeout, poll_s)))

    async def get_asset(self, asset_id: str) -> Asset:
        return Asset.from_json(await self._run(self._ops.json(Call("GET", f"/v1/assets/{asset_id}"))))

    async def list_assets(self, *, kind: Optional[str] = None, status: Optional[str] = None, offset: int = 0,
                          limit: int = 50) -> List[Asset]:
        page = await self._run(self._ops.listing("/v1/assets", offset, limit, {"kind": kind, "status": status}))
        return [Asset.from_json(a) for a in page]

    async def delete_asset(self, asset: Union[Asset, str]) -> None:
        await self._run(self._ops.json(Call("DELETE", f"/v1/assets/{getattr(asset, 'id', asset)}")))

    async def upload_target(self, path: Union[str, Path], name: str, role: str = "validation",
                            format: Optional[str] = None) -> Target:
        return Target.from_json(await self._run(self._ops.upload_target(Path(path), name, role, format)))

    async def get_target(self, target_id: str) -> Target:
        return Target.from_json(await self._run(self._ops.json(Call("GET", f"/v1/targets/{target_id}"))))

    async def list_targets(self, *, role: Optional[str] = None, offset: int = 0, limit: int = 50) -> List[Target]:
        page = await self._run(self._ops.listing("/v1/targets", offset, limit, {"role": role}))
        return [Target.from_json(t) for t in page]

    async def delete_target(self, target: Union[Target, str]) -> None:
        await self._run(self._ops.json(Call("DELETE", f"/v1/targets/{getattr(target, 'id', target)}")))

    async def upload_weights(self, path: Union[str, Path], name: str) -> Weights:
        return Weights.from_json(await self._run(self._ops.upload_weights(Path(path), name)))

    async def get_weights(self, weights_id: str) -> Weights:
        return Weights.from_json(await self._run(self._ops.json(Call("GET", f"/v1/weights/{weights_id}"))))

    async def list_weights(self, *, offset: int = 0, limit: int = 50) -> List[Weights]:
        return [Weights.from_json(w) for w in await self._run(self._ops.listing("/v1/weights", offset, limit, {}))]

    async def delete_weights(self, weights: Union[Weights, str]) -> None:
        await self._run(self._ops.json(Call("DELETE", f"/v1/weights/{getattr(weights, 'id', weights)}")))

    async def upload_backgrounds(self, path: Union[str, Path], name: str) -> Backgrounds:
        return Backgrounds.from_json(await self._run(self._ops.upload_backgrounds(Path(path), name)))

    async def get_backgrounds(self, backgrounds_id: str) -> Backgrounds:
        call = Call("GET", f"/v1/backgrounds/{backgrounds_id}")
        return Backgrounds.from_json(await self._run(self._ops.json(call)))

    async def list_backgrounds(self, *, offset: int = 0, limit: int = 50) -> List[Backgrounds]:
        page = await self._run(self._ops.listing("/v1/backgrounds", offset, limit, {}))
        return [Backgrounds.from_json(b) for b in page]

    async def delete_backgrounds(self, backgrounds: Union[Backgrounds, str]) -> None:
        await self._run(self._ops.json(Call("DELETE", f"/v1/backgrounds/{getattr(backgrounds, 'id', backgrounds)}")))

    async def create_job(self, spec: Union[JobSpec, Dict[str, Any]], *, preset: Union[Preset, str, None] = None,
                         idempotency_key: Optional[str] = None) -> AsyncJob:
        """See :meth:`Client.create_job`."""
        return AsyncJob(await self._run(self._ops.create_job(job_spec(spec, preset), idempotency_key)), self)

    async def list_presets(self) -> List[Preset]:
        """See :meth:`Client.list_presets`."""
        return [Preset.from_json(p) for p in (await self._run(self._ops.json(Call("GET", "/v1/presets"))))["data"]]

    async def get_job(self, job_id: str) -> AsyncJob:
        return AsyncJob(await self._run(self._ops.json(Call("GET", f"/v1/jobs/{job_id}"))), self)

    async def retry_job(self, job: Union[AsyncJob, str]) -> AsyncJob:
        """See :meth:`Job.retry`."""
        return AsyncJob(await self._run(self._ops.json(Call("POST", f"/v1/jobs/{getattr(job, 'id', job)}/retry"))), self)

    async def list_jobs(self, *, status: Optional[str] = None, asset: Union[Asset, str, None] = None,
                        target: Union[Target, str, None] = None, offset: int = 0, limit: int = 50) -> List[AsyncJob]:
        filters = {"status": status, "asset": asset, "target": target}
        return [AsyncJob(j, self) for j in await self._run(self._ops.listing("/v1/jobs", offset, limit, filters))]
