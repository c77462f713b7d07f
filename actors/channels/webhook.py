"""The webhook channel: a signed JSON POST in the Standard Webhooks format, behind an SSRF guard."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from actors.channels import register
from actors.channels.base import (
    Channel,
    ChannelConfig,
    Notification,
    PermanentError,
    TransientError,
    system_tls_context,
)
from actors.channels.deadline import Cutoff
from actors.channels.netguard import Resolver, host_refusal, refusal_reason, system_resolver
from actors.channels.pinned_http import ConnectFailed, Endpoint, PinnedConnection, read_limited, reusable
from actors.flow.keys import destination_key

#: Sent on every request, so receivers can tell our traffic apart in their logs.
USER_AGENT = "worker-job-processor"

#: Longest Retry-After we honour, in seconds (one hour, the default `WJP_BACKOFF_MAX`): a provider
#: asking for more gets retried after an hour and may ask again.
MAX_RETRY_AFTER = 3600.0

#: Most of a response body we read; only a short excerpt of it ever reaches an error message.
MAX_RESPONSE_BYTES = 16 * 1024

#: Length of the response excerpt quoted in an error message.
EXCERPT_CHARS = 200

#: How long an idle connection is kept for the next delivery to the same endpoint: under the shortest idle
#: timeout servers commonly use (gunicorn's 2 s), so a receiver rarely closes one just as it is reused.
KEEPALIVE_SECONDS = 1.5

#: Endpoints (host name and address) each worker thread keeps a connection to; the least recently used
#: one is closed when a new one would pass this.
ENDPOINTS_PER_THREAD = 32

#: Recipient URLs each channel keeps parsed and checked.
URLS_KEPT = 1024

_SECRET_PREFIX = "whsec_"

#: The port of a URL that names none.
_DEFAULT_PORTS = {"https": 443, "http": 80}


class Headers(Protocol):
    """A response's headers, looked up by name whatever its case (httpx's and `http.client`'s both)."""

    def get(self, name: str, /) -> str | None: ...


def decode_secret(secret: str) -> bytes:
    """Return the key bytes of a Standard Webhooks secret, `whsec_` + base64 (the prefix is optional).

    Raises:
        ValueError: the secret is empty or not base64; the message names `WJP_WEBHOOK_SECRET`.
    """
    encoded = secret.strip().removeprefix(_SECRET_PREFIX)
    try:
        # Padding is often dropped when secrets are copied around; restore it before decoding.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("WJP_WEBHOOK_SECRET must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("WJP_WEBHOOK_SECRET must not be empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Return a Retry-After header (delta-seconds or HTTP-date) as seconds from `now`, capped.

    Returns None when the header is absent or unreadable.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def raise_for_status(status: int, headers: Headers, body: bytes, *, now: float) -> None:
    """Raise the delivery error a non-2xx response (its status, headers and the start of its body) means; return
    for 2xx.

    408, 429 and 5xx are transient (with the provider's Retry-After), 429 and a 503 with Retry-After throttling
    ones; 3xx are permanent because redirects are not followed (one could lead to a private address); other 4xx
    are permanent.
    """
    if 200 <= status < 300:
        return
    quoted = excerpt(body)
    detail = f"HTTP {status}" + (f": {quoted}" if quoted else "")
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(headers.get("retry-after"), now=now)
        throttled = status == 429 or (status == 503 and retry_after is not None)
        raise TransientError(detail, retry_after=retry_after, throttled=throttled)
    if 300 <= status < 400:
        location = headers.get("location") or ""
        raise PermanentError(f"HTTP {status}: redirects are not followed (Location: {location[:200]})")
    raise PermanentError(detail)


def excerpt(body: bytes) -> str:
    """Return the start of a response body on one line, for an error message."""
    return " ".join(body.decode("utf-8", "replace").split())[:EXCERPT_CHARS]


class _ThreadConnections(threading.local):
    """Each worker thread's kept connections, least recently used first."""

    def __init__(self) -> None:
        self.by_endpoint: OrderedDict[Endpoint, PinnedConnection] = OrderedDict()


@functools.lru_cache(maxsize=URLS_KEPT)
def webhook_destination(url: str) -> str:
    """`webhook:<host>:<port>`: the port explicit, the host as httpx connects to it (IDNA ASCII). Kept per URL: the
    workers ask it of every finished job's callback URL."""
    parsed = httpx.URL(url)
    return destination_key("webhook", parsed.raw_host.decode("ascii"), parsed.port or _DEFAULT_PORTS[parsed.scheme])


@register
class WebhookChannel(Channel):
    """POSTs the notification as JSON to the recipient URL, signed when a secret is set."""

    name = "webhook"

    def __init__(
        self,
        config: ChannelConfig,
        *,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(config)
        self.timeout = min(config.webhook_timeout, config.timeout_cap)
        self._key = decode_secret(config.webhook_secret) if config.webhook_secret else None
        self._resolver = resolver
        self._clock = clock
        # One for every connection (None: the system's, `system_tls_context`, built when first needed): loading the
        # CA bundle is the slow part of a client, and a context is safe to share between threads.
        self._ssl_context = ssl_context
        self._connections = _ThreadConnections()
        # A callback URL or a webhook recipient comes back job after job: parsed and checked once (a pure function
        # of the string and the settings; a refusal raises, and is not kept).
        self._recipient_url = functools.lru_cache(maxsize=URLS_KEPT)(self._parse_recipient)

    def check_recipient(self, recipient: str) -> str | None:
        try:
            self._recipient_url(recipient)
        except PermanentError as exc:
            return str(exc)
        return None

    def destination(self, recipient: str) -> str:
        return webhook_destination(recipient)

    def _parse_recipient(self, recipient: str) -> httpx.URL:
        """The recipient as a URL we may post to; the PermanentError says why it is not one."""
        if any(char.isspace() or not char.isprintable() for char in recipient):
            raise PermanentError("The webhook URL must not contain spaces or control characters.")
        try:
            url = httpx.URL(recipient)
            host = url.host  # decodes an IDNA host, which parsing the URL leaves for later
        except httpx.InvalidURL as exc:
            raise PermanentError(f"The webhook URL is not valid: {exc}.") from exc
        except UnicodeError as exc:  # IDNA: a host such as xn--zz.com that no DNS name can be
            raise PermanentError("The webhook URL's host is not a valid internationalized domain name.") from exc
        if url.scheme not in ("http", "https") or not host:
            raise PermanentError("The webhook URL must be an absolute http:// or https:// URL with a host.")
        if url.userinfo:
            # It would be stored, shown in job bodies and logs, and sent in the clear: a secret does not go there.
            raise PermanentError("The webhook URL must not contain a user name or password; sign requests instead.")
        if not self.config.webhook_allow_private:
            reason = host_refusal(host)
            if reason:
                raise PermanentError(f"The webhook URL is refused because {reason}; private targets are not allowed.")
        return url

    def deliver(self, notification: Notification) -> str:
        msg_id = str(notification.job_id)
        body = {
            "job_id": msg_id,
            "recipient": notification.recipient,
            "message": notification.message,
            "metadata": notification.metadata,
            "attempt": notification.attempt,
        }
        return self.post_event(notification.recipient, msg_id, body, deadline=notification.deadline)

    def post_event(self, recipient: str, msg_id: str, event: dict[str, Any], *, deadline: float | None) -> str:
        """POST `event` to `recipient` as a Standard Webhooks message `msg_id`, behind the guard and within the
        timeouts of every webhook (status callbacks go out this way too); a receipt, or a `DeliveryError`."""
        url = self._recipient_url(recipient)
        addresses = self._checked_addresses(url)
        timestamp = int(self._clock())
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {
            # The original host, port included, while the connection goes to the checked address.
            "Host": url.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            # Responses are read raw (`read_limited`); a receiver that compresses anyway is not inflated.
            "Accept-Encoding": "identity",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        with Cutoff(deadline) as cutoff:
            return self._post(url, addresses, body, headers, cutoff)

    def _checked_addresses(self, url: httpx.URL) -> list[str]:
        """Resolve the URL's host once and refuse it if any address is off-limits.

        Every address must pass, not just the one used: otherwise a host listing one public and
        one private address would be refused or accepted depending on which one answers.
        """
        port = url.port or _DEFAULT_PORTS[url.scheme]
        try:
            # The host as DNS and TLS know it: IDNA 2008 A-labels (Python's own codec is IDNA 2003, which maps
            # "faß" to "fass", another name).
            addresses = self._resolver(_wire_host(url), port)
        except (OSError, UnicodeError) as exc:
            # Usually a DNS outage or a record not yet published; an operator can still cancel.
            raise TransientError(f"could not resolve {url.host}: {exc}") from exc
        if not addresses:
            raise TransientError(f"could not resolve {url.host}: no addresses")
        if not self.config.webhook_allow_private:
            for address in addresses:
                reason = refusal_reason(ipaddress.ip_address(address))
                if reason:
                    raise PermanentError(
                        f"webhook target {url.host} refused, no request sent: {reason}; "
                        "private targets are not allowed (WJP_WEBHOOK_ALLOW_PRIVATE)"
                    )
        return addresses

    def _post(
        self, url: httpx.URL, addresses: list[str], body: bytes, headers: dict[str, str], cutoff: Cutoff
    ) -> str:
        ends = time.monotonic() + cutoff.left(self.timeout)
        port = url.port or _DEFAULT_PORTS[url.scheme]
        host = _wire_host(url)
        target = url.raw_path.decode("ascii")
        for index, address in enumerate(addresses):
            remaining = ends - time.monotonic()
            if remaining <= 0:
                break
            # The connection goes to the checked address, so no second lookup happens and DNS cannot change the
            # answer in between; Host and TLS (SNI and the certificate check) still use the original host name.
            endpoint = Endpoint(url.scheme, host, port, address)
            connection = self._connection(endpoint)
            try:
                response = connection.post(target, headers, body, remaining)
                content = read_limited(response, MAX_RESPONSE_BYTES, ends)
            except (OSError, http.client.HTTPException) as exc:
                self._forget(endpoint)  # a connection that failed is never reused
                if cutoff.expired:
                    raise TransientError(cutoff.reason(url.host)) from exc
                if isinstance(exc, ConnectFailed) and index + 1 < len(addresses):
                    continue  # Nothing was sent; the host's next address may answer.
                if isinstance(exc, ConnectFailed):
                    raise TransientError(f"could not connect to {url.host} ({address}): {exc}") from exc
                if isinstance(exc, TimeoutError):
                    raise TransientError(f"{url.host} timed out after {self.timeout:g}s") from exc
                raise TransientError(f"{url.host} failed ({type(exc).__name__}): {exc}") from exc
            if cutoff.fired:
                # Cut while the response came: `http.client` takes the end of the stream for the end of the head
                # or body, so what was read is no answer.
                self._forget(endpoint)
                raise TransientError(cutoff.reason(url.host))
            if not reusable(response):
                response.close()
                self._forget(endpoint)
            raise_for_status(response.status, response.msg, content, now=self._clock())
            return f"HTTP {response.status}"
        if cutoff.expired:
            raise TransientError(cutoff.reason(url.host))
        raise TransientError(f"{url.host} timed out after {self.timeout:g}s")

    def _connection(self, endpoint: Endpoint) -> PinnedConnection:
        """This thread's connection to one host name at one address, kept for the next delivery there.

        A host name that shares the address has a connection of its own (its certificate was checked for another
        name). One thread's deliveries run one at a time, so its connections need no lock.
        """
        connections = self._connections.by_endpoint
        now = time.monotonic()
        # Those idle past the keep-alive are closed now rather than whenever the endpoint is next used, which may
        # be never.
        while connections:
            stale_endpoint, stale = next(iter(connections.items()))
            if now - stale.used_at <= KEEPALIVE_SECONDS:
                break
            del connections[stale_endpoint]
            stale.close()
        connection = connections.pop(endpoint, None) or PinnedConnection(endpoint, self._tls_context(endpoint))
        connections[endpoint] = connection
        if len(connections) > ENDPOINTS_PER_THREAD:
            connections.popitem(last=False)[1].close()
        return connection

    def _forget(self, endpoint: Endpoint) -> None:
        """Close this thread's connection to an endpoint: it failed, was cut by the deadline, or holds a response
        not read to its end."""
        kept = self._connections.by_endpoint.pop(endpoint, None)
        if kept is not None:
            kept.close()

    def _tls_context(self, endpoint: Endpoint) -> ssl.SSLContext | None:
        if endpoint.scheme != "https":
            return None
        return self._ssl_context or system_tls_context()


def _wire_host(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii")
