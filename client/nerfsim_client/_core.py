"""The SDK's one implementation, written once for :class:`~nerfsim_client.Client` and
:class:`~nerfsim_client.AsyncClient`.

Each operation is a generator that describes its I/O as effects - an HTTP :class:`Call`,
:class:`Read` of the next chunk of a streamed answer, :class:`Close`, :class:`Sleep` - and gets
each effect's result sent back (or the ``httpx.TransportError`` it raised thrown in). The sync
client performs effects with ``httpx.Client`` and ``time.sleep``, the async client with
``httpx.AsyncClient`` and ``asyncio.sleep``; retries, error mapping, the SSE parser, resumable
downloads and the progress bars exist once, here. Operations that produce a stream of items
(``events``) hand each one out as :class:`Emit`.

Local files (uploaded archives, downloads) are read and written with plain blocking calls in
both clients: they are local disk operations of one chunk at a time.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple, Union

import httpx
from tqdm.auto import tqdm

from nerfsim_client._version import __version__
from nerfsim_client._retry import RETRY_STATUSES, SAFE_RETRY_STATUSES, RetryPolicy, parse_retry_after
from nerfsim_client.errors import (
    APIConnectionError,
    APIError,
    AssetBuildError,
    JobFailedError,
    NerfsimError,
    WaitTimeout,
    error_class,
)
from nerfsim_client.models import Asset, Event, JobData
from nerfsim_client.spec import JobSpec

DEFAULT_TIMEOUT = httpx.Timeout(60.0)
UPLOAD_TIMEOUT = httpx.Timeout(60.0, read=900.0, write=900.0)
"""Uploads are checked completely (every image decoded) before the service answers."""
STREAM_READ_TIMEOUT_S = 45.0
"""Longest silence on an event stream or a download before the connection counts as broken
(the service sends a keep-alive comment on an idle event stream every 15 s)."""
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport failures before the request was sent: safe to retry for any request."""

Timeout = Union[httpx.Timeout, float, None]


# --------------------------------------------------------------------------------------------
# effects


@dataclass
class Call:
    """One HTTP request."""

    method: str
    path: str
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    form: Optional[Dict[str, str]] = None
    upload: Optional[Path] = None
    """A file sent as the multipart field ``file`` (opened afresh for every attempt)."""
    upload_name: str = ""
    headers: Dict[str, str] = field(default_factory=dict)
    stream: bool = False
    """Answer body read chunk by chunk with :class:`Read` (else read whole)."""
    timeout: Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    idempotent: bool = True
    """Repeating it cannot do the work twice: retried after any failure (else only when the
    service refused it outright, or the connection failed before it was sent)."""


@dataclass
class Read:
    """The next chunk of a streamed answer's body (``b""`` at its end)."""

    response: httpx.Response


@dataclass
class Close:
    """Release a streamed answer's connection."""

    response: httpx.Response


@dataclass
class Sleep:
    seconds: float


@dataclass
class Emit:
    """An item for the caller of an iterating operation."""

    item: Any


Effect = Union[Call, Read, Close, Sleep, Emit]
Operation = Generator[Effect, Any, Any]


def default_headers(api_key: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": f"nerfsim-client/{__version__}"}


def resolve_api_key(api_key: Optional[str]) -> str:
    key = api_key or os.environ.get("NERFSIM_API_KEY")
    if not key:
        raise ValueError("no API key: pass api_key=... or set NERFSIM_API_KEY (create one with 'nerfsim keys create')")
    return key


# --------------------------------------------------------------------------------------------
# answers


def describe_detail(detail: Any) -> str:
    """The service's error detail as one line (FastAPI's field errors as 'field: message')."""
    if isinstance(detail, list) and detail and all(isinstance(d, dict) and "msg" in d for d in detail):
        parts = []
        for item in detail:
            location = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "header"))
            parts.append(f"{location}: {item['msg']}" if location else item["msg"])
        return "; ".join(parts)
    return detail if isinstance(detail, str) else json.dumps(detail)


def api_error(response: httpx.Response, body: bytes, call: Call) -> APIError:
    try:
        payload = json.loads(body)
        detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    except ValueError:
        detail = body.decode("utf-8", "replace").strip()[:1000] or response.reason_phrase
    return error_class(response.status_code)(response.status_code, describe_detail(detail), detail, response.headers,
                                             call.method, call.path)


class SSEDecoder:
    """Incremental parser of a ``text/event-stream`` body (the WHATWG rules: ``event``,
    ``data`` (lines joined by newlines), ``id``; comments and ``retry`` ignored). Data is
    decoded as JSON when it parses."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._after_cr = False
        self._event, self._data, self._id = "", [], None

    def feed(self, chunk: bytes) -> List[Event]:
        text = self._text.decode(chunk)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the second half of a '\r\n' split between chunks
        if text:
            self._after_cr = text.endswith("\r")
        lines = re.split(r"\r\n|\r|\n", self._buffer + text)
        self._buffer = lines.pop()  # the unfinished line
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Optional[Event]:
        if not line:
            if not self._data:
                self._event = ""
                return None
            text = "\n".join(self._data)
            try:
                data = json.loads(text)
            except ValueError:
                data = {"text": text}
            event = Event(self._event or "message", data if isinstance(data, dict) else {"value": data}, self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value or None
        return None


def parse_content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of ``Content-Range: bytes a-b/n`` (or ``bytes */n``)."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start is not None else None), (int(total) if total != "*" else None)


def archive_for_upload(path: Path, scratch: Path) -> Path:
    """``path`` itself when it is a file (zip or tar, or one photo); a folder is zipped into ``scratch``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder to upload")
    archive = scratch / f"{path.name or 'upload'}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for item in sorted(path.rglob("*")):
            if item.is_file():
                bundle.write(item, item.relative_to(path).as_posix())
    return archive


def artifact_name(job: Dict[str, Any], kind: str) -> str:
    """The artifact ``kind`` names: its file name, or the name without extension (``dataset``)."""
    artifacts = job.get("artifacts", {})
    if kind in artifacts:
        return kind
    matches = [name for name in artifacts if name.split(".", 1)[0] == kind]
    if len(matches) == 1:
        return matches[0]
    state = "it has " + ", ".join(sorted(artifacts)) if artifacts else f"it is {job['status']} and has none yet"
    raise NerfsimError(f"job {job['id']} has no artifact {kind!r} ({state})")


def _ref(value: Any) -> Any:
    """An id from an id or a record object."""
    return getattr(value, "id", value)


class ProgressBar:
    """One tqdm bar that follows a job's events across its stages."""

    def __init__(self, job_id: str, enabled: bool) -> None:
        self.job_id = job_id
        self.bar = tqdm(total=None, desc=f"{job_id}: waiting", unit="it", disable=not enabled, dynamic_ncols=True)

    def __call__(self, event: Event) -> None:
        data = event.data
        if event.event == "status":
            self.bar.set_description(f"{self.job_id}: {data.get('status')}")
        elif event.event == "progress":
            stage = data.get("stage", "")
            done = data.get("iteration", 0) + (1 if stage == "outer" else 0)
            self.bar.set_description(f"{self.job_id}: {stage}")
            self.bar.total = data.get("total")
            self.bar.n = done
            shown = {k: f"{v:.4g}" for k, v in data.get("metrics", {}).items()
                     if k in ("val_loss", "val_map50_95", "test_map50_95") and isinstance(v, (int, float))}
            self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------------------------
# operations


class Operations:
    """The API's calls as effect generators (see the module docstring)."""

    def __init__(self, retry: RetryPolicy, progress: bool) -> None:
        self.retry = retry
        self.progress = progress

    # ---------------------------------------------------------------- plumbing

    def request(self, call: Call) -> Generator[Effect, Any, httpx.Response]:
        """Send ``call``, retrying per the policy; the answer (2xx/3xx) or a typed error."""
        attempt = 0
        while True:
            try:
                response = yield call
            except httpx.TransportError as error:
                if attempt >= self.retry.max_retries or not (call.idempotent or isinstance(error, CONNECT_ERRORS)):
                    raise APIConnectionError(f"{call.method} {call.path}: {type(error).__name__}: {error}") from error
                yield Sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            body = (yield from self.read_all(response)) if call.stream else response.content
            retryable = response.status_code in (RETRY_STATUSES if call.idempotent else SAFE_RETRY_STATUSES)
            if retryable and attempt < self.retry.max_retries:
                yield Sleep(self.retry.delay(attempt, parse_retry_after(response.headers.get("retry-after"))))
                attempt += 1
                continue
            raise api_error(response, body, call)

    def read_all(self, response: httpx.Response) -> Generator[Effect, Any, bytes]:
        chunks = []
        while True:
            chunk = yield Read(response)
            if not chunk:
                break
            chunks.append(chunk)
        yield Close(response)
        return b"".join(chunks)

    def json(self, call: Call) -> Generator[Effect, Any, Any]:
        response = yield from self.request(call)
        return response.json() if response.content else None

    def sleep_until_due(self, seconds: float, deadline: Optional[float]) -> Generator[Effect, Any, None]:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        yield Sleep(seconds)

    # ---------------------------------------------------------------- assets and targets

    def upload(self, path: Path, url: str, form: Dict[str, str]) -> Generator[Effect, Any, Dict[str, Any]]:
        scratch = Path(tempfile.mkdtemp(prefix="nerfsim-upload-"))
        try:
            archive = archive_for_upload(Path(path), scratch)
            return (yield from self.json(Call("POST", url, form=form, upload=archive, upload_name=archive.name,
                                              timeout=UPLOAD_TIMEOUT, idempotent=False)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def upload_asset(self, path: Path, name: str, kind: str, build: Optional[Dict[str, Any]]):
        return (yield from self.upload(path, "/v1/assets", {"name": name, "kind": kind, "build": json.dumps(build or {})}))

    def upload_target(self, path: Path, name: str, role: str, format: Optional[str]):
        form = {"name": name, "role": role, **({"format": format} if format else {})}
        return (yield from self.upload(path, "/v1/targets", form))

    def upload_weights(self, path: Path, name: str):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file to upload")
        return (yield from self.upload(path, "/v1/weights", {"name": name}))

    def upload_backgrounds(self, path: Path, name: str):
        return (yield from self.upload(path, "/v1/backgrounds", {"name": name}))

    def wait_asset(self, asset_id: str, timeout: Optional[float], poll_s: float):
        """Poll an asset until it is built (``ready``); a failed build raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            asset = yield from self.json(Call("GET", f"/v1/assets/{asset_id}"))
            if asset["status"] == "ready":
                return asset
            if asset["status"] == "failed":
                raise AssetBuildError(Asset.from_json(asset))
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"asset {asset_id} still {asset['status']} after {timeout} s")
            yield from self.sleep_until_due(poll_s, deadline)

    def listing(self, path: str, offset: int, limit: int, filters: Dict[str, Any]):
        params = {"offset": offset, "limit": limit, **{k: _ref(v) for k, v in filters.items() if v is not None}}
        return (yield from self.json(Call("GET", path, params=params)))["data"]

    # ---------------------------------------------------------------- jobs

    def create_job(self, spec: JobSpec, idempotency_key: Optional[str]):
        """Create a job; the idempotency key (a new one unless given) makes the call safe to
        retry: a repeat returns the job the first attempt created."""
        headers = {"Idempotency-Key": idempotency_key or f"sdk-{uuid.uuid4().hex}"}
        body = spec.model_dump(mode="json")
        return (yield from self.json(Call("POST", "/v1/jobs", json=body, headers=headers)))

    def events(self, job_id: str, last_event_id: Optional[str] = None, deadline: Optional[float] = None,
               on_event: Optional[Callable[[Event], None]] = None):
        """The job's events from ``last_event_id`` (default: the first) to its final status,
        reconnecting where it stopped when the connection breaks. Each event goes to
        ``on_event``, or to the caller (:class:`Emit`) without one."""
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            read_s = STREAM_READ_TIMEOUT_S if deadline is None else max(0.05, min(STREAM_READ_TIMEOUT_S, deadline - time.monotonic()))
            call = Call("GET", f"/v1/jobs/{job_id}/events", headers=headers, stream=True,
                        timeout=httpx.Timeout(DEFAULT_TIMEOUT.connect, read=read_s))
            response = yield from self.request(call)
            decoder = SSEDecoder()
            try:
                while True:
                    self._check_deadline(deadline, job_id)
                    chunk = yield Read(response)
                    if not chunk:
                        break
                    for event in decoder.feed(chunk):
                        failures = 0
                        last_event_id = event.id or last_event_id
                        if on_event is None:
                            yield Emit(event)
                        else:
                            on_event(event)
                        if event.is_final:
                            yield Close(response)
                            return
                broken: Optional[BaseException] = None  # the stream ended before the final status
            except httpx.TransportError as error:
                broken = error
            yield Close(response)
            self._check_deadline(deadline, job_id)
            failures += 1
            if failures > self.retry.max_retries:
                raise APIConnectionError(f"event stream of job {job_id} kept breaking (last: {broken!r}); "
                                         f"resume with last_event_id={last_event_id!r}") from broken
            yield from self.sleep_until_due(self.retry.delay(failures - 1), deadline)

    @staticmethod
    def _check_deadline(deadline: Optional[float], job_id: str) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"job {job_id} did not finish in time (it keeps running)")

    def wait(self, job_id: str, timeout: Optional[float], progress: Optional[bool]):
        """Follow the job's events (one progress bar) until it ends; its final record. A failed
        job raises :class:`JobFailedError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = yield from self.json(Call("GET", f"/v1/jobs/{job_id}"))
        if not JobData(job).done:
            bar = ProgressBar(job_id, self.progress if progress is None else progress)
            try:
                yield from self.events(job_id, deadline=deadline, on_event=bar)
            finally:
                bar.close()
            job = yield from self.json(Call("GET", f"/v1/jobs/{job_id}"))
        if job["status"] == "failed":
            raise JobFailedError(JobData(job))
        return job

    def download(self, job_id: str, kind: str, path: Union[str, Path], progress: Optional[bool]):
        """Download an artifact to ``path`` (a file, or a folder to put it in), resuming a
        previous partial download of the same artifact (``<path>.part``) with an HTTP Range
        request, and again inside this call whenever the connection breaks."""
        job = yield from self.json(Call("GET", f"/v1/jobs/{job_id}"))
        name = artifact_name(job, kind)
        url = job["artifacts"][name]
        destination = Path(path)
        if destination.is_dir() or str(path).endswith(("/", os.sep)):
            destination = destination / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        meta_path = destination.with_name(destination.name + ".part.json")
        offset, validator = _resume_point(partial, meta_path, url)

        bar = tqdm(total=None, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                   disable=not (self.progress if progress is None else progress), dynamic_ncols=True)
        failures = 0
        try:
            while True:
                headers = {"Accept-Encoding": "identity"}
                if offset:
                    headers["Range"] = f"bytes={offset}-"
                    if validator:
                        headers["If-Range"] = validator
                call = Call("GET", url, headers=headers, stream=True,
                            timeout=httpx.Timeout(DEFAULT_TIMEOUT.connect, read=STREAM_READ_TIMEOUT_S))
                try:
                    response = yield from self.request(call)
                except APIError as error:
                    if error.status_code != 416:
                        raise
                    # Nothing left after ``offset``: complete if the sizes agree, else start over.
                    _, total = parse_content_range(error.headers.get("content-range"))
                    if total == offset:
                        break
                    offset, validator = 0, None
                    continue
                if response.status_code == 206:
                    start, total = parse_content_range(response.headers.get("content-range"))
                    if start != offset:
                        raise NerfsimError(f"{name}: asked for bytes from {offset}, the service sent from {start}")
                else:  # the whole file: the artifact changed since the partial download, or no range asked
                    offset = 0
                    total = int(response.headers["content-length"]) if "content-length" in response.headers else None
                validator = response.headers.get("etag") or response.headers.get("last-modified")
                meta_path.write_text(json.dumps({"url": url, "validator": validator}))
                bar.total, bar.n = total, offset
                bar.refresh()
                try:
                    with open(partial, "ab" if offset else "wb") as out:
                        while True:
                            chunk = yield Read(response)
                            if not chunk:
                                break
                            out.write(chunk)
                            offset += len(chunk)
                            bar.update(len(chunk))
                            failures = 0
                    broken: Optional[BaseException] = None
                except httpx.TransportError as error:
                    broken = error
                yield Close(response)
                if broken is None and (total is None or offset == total):
                    break
                failures += 1
                if failures > self.retry.max_retries:
                    raise APIConnectionError(f"download of {name} broke off at {offset} of {total} bytes "
                                             f"({broken!r}); run it again to resume") from broken
                yield Sleep(self.retry.delay(failures - 1))
        finally:
            bar.close()
        os.replace(partial, destination)
        meta_path.unlink(missing_ok=True)
        return destination


def _resume_point(partial: Path, meta_path: Path, url: str) -> Tuple[int, Optional[str]]:
    """Bytes already downloaded of ``url`` and the validator (ETag) they were sent with."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = None
    if meta is not None and meta.get("url") == url and partial.is_file():
        return partial.stat().st_size, meta.get("validator")
    partial.unlink(missing_ok=True)
    return 0, None
