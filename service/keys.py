"""API keys: each names its tenant; only a SHA-256 hash of the secret is stored.

A key reads ``nsk_<key id>_<secret>``: the id finds the stored hash in one lookup, the secret
(32 random bytes) is compared with it in constant time. Keys are long random strings, not
passwords, so a fast hash is enough (nothing to brute-force). Keys live in Redis and in
``keys/<key id>.json`` under the storage root, so ``nerfsim keys create`` works while the
service is down and a key survives Redis losing its data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets

import redis
from pydantic import BaseModel, Field

from service.errors import NotFound, ServiceError
from service.schemas import utcnow
from service.storage import Storage, write_json_atomic

KEY_PREFIX = "nsk"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class AuthError(ServiceError):
    """A missing, malformed, unknown or revoked API key."""

    status_code = 401


class ApiKeyRecord(BaseModel):
    key_id: str
    tenant: str
    name: str = ""
    secret_sha256: str
    created_at: dt.datetime = Field(default_factory=utcnow)
    revoked_at: dt.datetime | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _redis_key(key_id: str) -> str:
    return f"nerfsim:apikey:{key_id}"


class KeyStore:
    """Create, list, revoke and check API keys."""

    def __init__(self, connection: redis.Redis | None, storage: Storage) -> None:
        self.redis = connection
        self.storage = storage

    def create(self, tenant: str | None = None, name: str = "") -> tuple[str, ApiKeyRecord]:
        """A new key (the only time its secret is seen) and its record. ``tenant`` defaults to
        a new tenant of its own."""
        key_id = secrets.token_hex(6)
        tenant = tenant or f"t-{key_id}"
        if not TENANT_PATTERN.match(tenant):
            raise ServiceError(f"tenant {tenant!r}: use 1-63 lower-case letters, digits, '-' or '_'")
        secret = secrets.token_urlsafe(32).replace("_", "-")
        record = ApiKeyRecord(key_id=key_id, tenant=tenant, name=name, secret_sha256=_hash(secret))
        self._save(record)
        return f"{KEY_PREFIX}_{key_id}_{secret}", record

    def list(self) -> list[ApiKeyRecord]:
        folder = self.storage.keys_dir()
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        records = [ApiKeyRecord.model_validate_json(p.read_text()) for p in paths]
        return sorted(records, key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        record = self._load(key_id)
        if record is None:
            raise NotFound(f"API key {key_id} not found")
        if record.revoked_at is None:
            record.revoked_at = utcnow()
            self._save(record)
        return record

    def authenticate(self, presented: str) -> str:
        """The tenant of a valid, unrevoked key."""
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX or not re.fullmatch(r"[0-9a-f]{12}", parts[1]):
            raise AuthError("malformed API key (expected nsk_<id>_<secret>)")
        record = self._load(parts[1])
        if record is None or not hmac.compare_digest(record.secret_sha256, _hash(parts[2])):
            raise AuthError("unknown API key")
        if record.revoked_at is not None:
            raise AuthError("revoked API key")
        return record.tenant

    def reconcile(self) -> int:
        """Copy key files into Redis (after Redis lost them); returns how many."""
        count = 0
        for record in self.list():
            if self.redis is not None and self.redis.get(_redis_key(record.key_id)) != record.model_dump_json().encode():
                self.redis.set(_redis_key(record.key_id), record.model_dump_json())
                count += 1
        return count

    def _load(self, key_id: str) -> ApiKeyRecord | None:
        raw = self.redis.get(_redis_key(key_id)) if self.redis is not None else None
        if raw is not None:
            return ApiKeyRecord.model_validate_json(raw)
        path = self.storage.keys_dir() / f"{key_id}.json"
        if not path.is_file():
            return None
        record = ApiKeyRecord.model_validate_json(path.read_text())
        if self.redis is not None:
            self.redis.set(_redis_key(key_id), record.model_dump_json())
        return record

    def _save(self, record: ApiKeyRecord) -> None:
        write_json_atomic(self.storage.keys_dir() / f"{record.key_id}.json", record.model_dump(mode="json"))
        if self.redis is not None:
            self.redis.set(_redis_key(record.key_id), record.model_dump_json())
