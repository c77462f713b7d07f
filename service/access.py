"""Who may call what: the admin token guards /internal/* and /metrics."""

from __future__ import annotations

import hmac

import falcon

from service.errors import ApiError

#: Paths that need the admin token when one is configured.
ADMIN_PREFIXES = ("/internal/", "/metrics")


def bearer_token(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class AdminTokenMiddleware:
    """Rejects operator endpoints without `Authorization: Bearer <WJP_ADMIN_TOKEN>`."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not req.path.startswith(ADMIN_PREFIXES):
            return
        given = bearer_token(req)
        # Constant-time comparison: the answer's timing must not reveal how much of a guess was right.
        if given is None or not hmac.compare_digest(given.encode(), self._token):
            raise ApiError(
                falcon.HTTP_401,
                "unauthorized",
                "This endpoint needs 'Authorization: Bearer <admin token>'.",
                headers={"WWW-Authenticate": 'Bearer realm="wjp-admin"'},
            )
