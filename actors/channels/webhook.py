"""The webhook channel: a signed JSON POST in the Standard Webhooks format, behind an SSRF guard."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

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
from actors.channels.transport import WatchedTransport
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

_SECRET_PREFIX = "whsec_"

#: The port of a URL that names none.
_DEFAULT_PORTS = {"https": 443, "http": 80}


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


def raise_for_status(response: httpx.Response, body: bytes, *, now: float) -> None:
    """Raise the delivery error a non-2xx response means; return for 2xx.

    408, 429 and 5xx are transient (with the provider's Retry-After), 429 and a 503 with Retry-After throttling
    ones; 3xx are permanent because redirects are not followed (one could lead to a private address); other 4xx
    are permanent.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    quoted = excerpt(body)
    detail = f"HTTP {status}" + (f": {quoted}" if quoted else "")
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
        throttled = status == 429 or (status == 503 and retry_after is not None)
        raise TransientError(detail, retry_after=retry_after, throttled=throttled)
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        raise PermanentError(f"HTTP {status}: redirects are not followed (Location: {location[:200]})")
    raise PermanentError(detail)


def read_limited(response: httpx.Response, deadline: float) -> bytes:
    """Read at most `MAX_RESPONSE_BYTES` of a streamed body as it came over the wire, stopping early at
    `deadline`. Raw: a receiver's gzip would be inflated a whole network read at a time (a 64 KiB read of a
    gzip bomb is 64 MiB), whatever the bound. A body compressed although we asked for none is not quoted."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_RESPONSE_BYTES or time.monotonic() >= deadline:
                break
    except httpx.HTTPError:
        pass  # The status line already decided the outcome; the body only adds detail.
    return b"".join(chunks)[:MAX_RESPONSE_BYTES]


def excerpt(body: bytes) -> str:
    """Return the start of a response body on one line, for an error message."""
    return " ".join(body.decode("utf-8", "replace").split())[:EXCERPT_CHARS]


class _ThreadTransports(threading.local):
    """Each worker thread's kept transports with the time each was last taken, least recently used first."""

    def __init__(self) -> None:
        self.by_endpoint: OrderedDict[tuple[str, str, int | None, str], tuple[WatchedTransport, float]] = (
            OrderedDict()
        )


def webhook_destination(url: str) -> str:
    """`webhook:<host>:<port>`: the port explicit, the host as httpx connects to it (IDNA ASCII)."""
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
        self._transports = _ThreadTransports()

    def check_recipient(self, recipient: str) -> str | None:
        try:
            self._recipient_url(recipient)
        except PermanentError as exc:
            return str(exc)
        return None

    def destination(self, recipient: str) -> str:
        return webhook_destination(recipient)

    def _recipient_url(self, recipient: str) -> httpx.URL:
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
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = self._resolver(url.host, port)
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
        sni = {"sni_hostname": url.host} if url.scheme == "https" else {}
        for index, address in enumerate(addresses):
            remaining = ends - time.monotonic()
            if remaining <= 0:
                break
            # The URL names the checked address, so no second lookup happens and DNS cannot
            # change the answer in between; Host and TLS (SNI and certificate check, via the
            # sni_hostname extension) still use the original host name.
            pinned = url.copy_with(host=address)
            request = httpx.Request(
                "POST",
                pinned,
                content=body,
                headers=headers,
                extensions={**sni, "timeout": httpx.Timeout(remaining).as_dict()},
            )
            try:
                response = self._transport(url, address).handle_request(request)
            except httpx.TransportError as exc:
                if cutoff.expired:
                    self._forget(url, address)
                    raise TransientError(cutoff.reason(url.host)) from exc
                if isinstance(exc, httpx.ConnectError) and index + 1 < len(addresses):
                    continue  # Nothing was sent; the host's next address may answer.
                if isinstance(exc, httpx.ConnectError):
                    raise TransientError(f"could not connect to {url.host} ({address}): {exc}") from exc
                if isinstance(exc, httpx.TimeoutException):
                    raise TransientError(f"{url.host} timed out after {self.timeout:g}s") from exc
                raise TransientError(f"{url.host} failed ({type(exc).__name__}): {exc}") from exc
            try:
                content = read_limited(response, ends)
            finally:
                response.close()
            if cutoff.fired:
                self._forget(url, address)
            raise_for_status(response, content, now=self._clock())
            return f"HTTP {response.status_code}"
        if cutoff.expired:
            raise TransientError(cutoff.reason(url.host))
        raise TransientError(f"{url.host} timed out after {self.timeout:g}s")

    def _transport(self, url: httpx.URL, address: str) -> WatchedTransport:
        """This thread's transport for one host name at one address, kept for the next delivery there.

        Its connections are made to that address only and checked against that host name, so reusing
        them keeps the pinning and the certificate check a new connection gets; a host name that shares
        the address has a transport of its own. A transport, not a client: no proxy from the environment
        (it would resolve the name itself and undo the pinning), no redirects, no cookies carried from one
        receiver's reply to the next delivery. One thread's deliveries run one at a time, so its transports
        need no lock and hold one connection each.
        """
        transports = self._transports.by_endpoint
        now = time.monotonic()
        # Those idle past the keep-alive hold only expired connections: close their sockets now rather
        # than whenever the endpoint is next used, which may be never.
        while transports:
            stale_key, (stale, taken) = next(iter(transports.items()))
            if now - taken <= KEEPALIVE_SECONDS:
                break
            del transports[stale_key]
            stale.close()
        key = (url.scheme, url.host, url.port, address)
        kept = transports.pop(key, None)
        transport = kept[0] if kept else self._new_transport()
        transports[key] = (transport, now)
        if len(transports) > ENDPOINTS_PER_THREAD:
            transports.popitem(last=False)[1][0].close()
        return transport

    def _forget(self, url: httpx.URL, address: str) -> None:
        """Close this thread's connection to an endpoint that the attempt's deadline cut: it is never reused."""
        kept = self._transports.by_endpoint.pop((url.scheme, url.host, url.port, address), None)
        if kept is not None:
            kept[0].close()

    def _new_transport(self) -> WatchedTransport:
        return WatchedTransport(
            ssl_context=self._ssl_context or system_tls_context(),
            limits=httpx.Limits(max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_SECONDS),
        )
