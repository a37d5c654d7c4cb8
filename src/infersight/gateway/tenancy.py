"""Who is calling, and which bounded labels they may use.

Keys are held only as sha256 digests; a lookup hashes the presented key. Use case and request type
come from headers but are bounded to configured values (anything else is ``other``) so that a client
cannot blow up label cardinality in metrics and the store.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from infersight.config import EVAL_REQUEST_TYPE, Settings, hash_api_key
from infersight.gateway import errors
from infersight.gateway.errors import GatewayError

OTHER = "other"
UNAUTHENTICATED = "_unauthenticated"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    use_cases: frozenset[str]
    request_types: frozenset[str]

    def use_case(self, header: str | None) -> str:
        return header if header is not None and header in self.use_cases else OTHER

    def request_type(self, header: str | None) -> str:
        return header if header is not None and header in self.request_types else OTHER


class TenantDirectory:
    def __init__(self, settings: Settings) -> None:
        self._by_digest: dict[str, Tenant] = {}
        # the exemption from evaluation is granted tenant by tenant: inherited, any tenant could take
        # its guardrail hits and errors out of the sample with one header
        default_types = frozenset(settings.request_types) - {EVAL_REQUEST_TYPE}
        for t in settings.tenants:
            tenant = Tenant(
                t.id,
                frozenset(t.use_cases),
                frozenset(t.request_types) if t.request_types is not None else default_types,
            )
            for key in t.api_keys:
                self._by_digest[hash_api_key(key)] = tenant
        self._admin_digests = [hash_api_key(k) for k in settings.admin_api_keys]
        self._metrics_digests = [hash_api_key(k) for k in settings.server.metrics_keys]

    def tenant_for_key(self, key: str) -> Tenant | None:
        # A dict lookup by digest: the digest, not the key, is what an attacker would have to guess,
        # so the lookup's timing reveals nothing useful about valid keys.
        return self._by_digest.get(hashlib.sha256(key.encode()).hexdigest())

    def is_admin(self, key: str) -> bool:
        return _matches(hashlib.sha256(key.encode()).hexdigest(), self._admin_digests)


    def metrics_refusal(self, authorization: str | None) -> GatewayError | None:
        """Why this caller may not read /metrics, or None. Open unless ``server.metrics_keys`` lists
        keys: the exposition counts requests, tokens and scores per tenant, so on a port tenants reach
        an operator can restrict it to scrape keys and admin keys. A tenant's own key gets 403."""
        if not self._metrics_digests:
            return None
        key = bearer_token(authorization)
        if key is None:
            return errors.missing_key()
        digest = hashlib.sha256(key.encode()).hexdigest()
        if _matches(digest, self._metrics_digests) or _matches(digest, self._admin_digests):
            return None
        if digest in self._by_digest:
            return GatewayError(403, "This key may not read /metrics; use a key from server.metrics_keys.",
                                type="permission_error", code="forbidden")
        return errors.unknown_key()


def _matches(digest: str, digests: list[str]) -> bool:
    """Constant-time comparison against each stored digest (admin and scrape keys are few)."""
    return any(hmac.compare_digest(digest, d) for d in digests)


def bearer_token(authorization: str | None) -> str | None:
    """The key from ``Authorization: Bearer <key>``; None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
