"""Dependencies of the API's routes, as ``Annotated`` aliases (FastAPI-template style).

The connection and stores are created once per app (``create_app``) and kept in ``app.state``;
routes get them through these dependencies, which tests replace with
``app.dependency_overrides``. The accessors are ``async`` because they do not block: FastAPI
runs a plain ``def`` dependency in its thread pool, a hop that cost more than a status
request's own work.
"""

from __future__ import annotations

from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Header, Request
from rq import Queue

from service.keys import AuthError, KeyStore
from service.ratelimit import RateLimiter
from service.records import RecordStore
from service.settings import ServiceSettings


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


async def get_async_redis(request: Request) -> redis.asyncio.Redis:
    return request.app.state.async_redis


async def get_store(request: Request) -> RecordStore:
    return request.app.state.store


async def get_keys(request: Request) -> KeyStore:
    return request.app.state.keys


async def get_queue(request: Request) -> Queue:
    return request.app.state.queue


async def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[redis.asyncio.Redis, Depends(get_async_redis)]
StoreDep = Annotated[RecordStore, Depends(get_store)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
QueueDep = Annotated[Queue, Depends(get_queue)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]


def get_tenant(
    keys: KeysDep,
    limiter: RateLimiterDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> str:
    """The tenant of the request's API key (``Authorization: Bearer <key>`` or ``X-API-Key``),
    within the key's rate limit."""
    presented = x_api_key
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise AuthError("use 'Authorization: Bearer <API key>'")
        presented = value.strip()
    if not presented:
        raise AuthError("missing API key ('Authorization: Bearer <key>' or 'X-API-Key')")
    tenant = keys.authenticate(presented)
    limiter.check(presented.split("_", 2)[1])  # the key id (authenticate checked the form)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
