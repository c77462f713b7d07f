"""The SMS channel: a gateway speaking Twilio's Messages REST API (`WJP_SMS_URL`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from actors.channels import deadline, register
from actors.channels.base import Channel, ChannelConfig, Notification, PermanentError, TransientError
from actors.channels.transport import WatchedTransport, read_limited
from actors.channels.webhook import MAX_RESPONSE_BYTES, USER_AGENT, raise_for_status
from actors.flow.keys import destination_key

#: Longest one SMS request may take, in seconds, before `ChannelConfig.timeout_cap` and the time left before the
#: attempt's deadline cut it.
SMS_TIMEOUT = 10.0

#: E.164: a plus sign and at most 15 digits; fewer than 8 is no real subscriber number.
_E164 = re.compile(r"\+[0-9]{8,15}", re.ASCII)


@register
class SmsChannel(Channel):
    """Sends a text message through a Twilio-compatible gateway; enabled when `WJP_SMS_URL` is set."""

    name = "sms"

    @classmethod
    def enabled(cls, config: ChannelConfig) -> bool:
        """The registry builds this channel only when a gateway is configured."""
        return bool(config.sms_url)

    def __init__(self, config: ChannelConfig, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config)
        if not config.sms_url:
            raise ValueError("WJP_SMS_URL must be set to use the sms channel")
        missing = [
            variable
            for variable, value in (
                ("WJP_SMS_ACCOUNT", config.sms_account),
                ("WJP_SMS_TOKEN", config.sms_token),
                ("WJP_SMS_FROM", config.sms_from),
            )
            if not value
        ]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise ValueError(f"WJP_SMS_URL is set but {' and '.join(missing)} {verb} missing")
        base = config.sms_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError("WJP_SMS_URL must be an http:// or https:// URL")
        account = quote(config.sms_account or "", safe="")
        self.endpoint = f"{base}/2010-04-01/Accounts/{account}/Messages.json"
        try:
            #: `sms:<gateway host>`: every message goes to the one gateway.
            self._destination = destination_key(self.name, httpx.URL(base).raw_host.decode("ascii"))
        except (httpx.InvalidURL, ValueError):
            raise ValueError("WJP_SMS_URL needs a host name, as in https://api.twilio.com") from None
        self.timeout = min(SMS_TIMEOUT, config.timeout_cap)
        self._clock = clock
        # One pooled client for the channel's lifetime: every request goes to the same gateway,
        # and httpx clients are safe to share between the worker's threads. Its connections are cut at
        # the attempt's deadline; a proxy from the environment would take the request out of their reach.
        self._client = httpx.Client(
            auth=(config.sms_account or "", config.sms_token or ""),
            # httpx would otherwise offer gzip, br and zstd; responses are read raw (`read_limited`).
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            transport=WatchedTransport(ssl_context=httpx.create_ssl_context(), limits=httpx.Limits()),
            trust_env=False,
        )

    def check_recipient(self, recipient: str) -> str | None:
        if not _E164.fullmatch(recipient):
            return "The phone number must be in E.164 form: + and 8 to 15 digits, as in +14155550123."
        return None

    def destination(self, recipient: str) -> str:
        return self._destination

    def deliver(self, notification: Notification) -> str:
        problem = self.check_recipient(notification.recipient)
        if problem:
            raise PermanentError(problem)
        form = {"To": notification.recipient, "From": self.config.sms_from or "", "Body": notification.message}
        with deadline.Cutoff(notification.deadline) as cutoff:
            timeout = cutoff.left(self.timeout)
            ends = time.monotonic() + timeout
            try:
                if timeout <= 0:
                    raise httpx.TimeoutException("no time left before the attempt's deadline")
                with self._client.stream("POST", self.endpoint, data=form, timeout=timeout) as response:
                    content = read_limited(response, MAX_RESPONSE_BYTES, ends)
            except httpx.TransportError as exc:
                if cutoff.expired:
                    raise TransientError(cutoff.reason("SMS gateway")) from exc
                if isinstance(exc, httpx.TimeoutException):
                    raise TransientError(f"SMS gateway timed out after {self.timeout:g}s") from exc
                raise TransientError(f"SMS gateway failed ({type(exc).__name__}): {exc}") from exc
        raise_for_status(response.status_code, response.headers, content, now=self._clock())
        return _receipt(response.status_code, content)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()


def _receipt(status: int, body: bytes) -> str:
    # Twilio answers 201 with the message resource; its "sid" identifies the message there.
    try:
        sid = json.loads(body).get("sid")
    except (ValueError, AttributeError):
        sid = None
    return f"sid {sid}" if isinstance(sid, str) and sid else f"HTTP {status}"
