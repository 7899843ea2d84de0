"""The node endpoint's token check: one rule for the page, the API, the stream and ``/metrics``.

Runs in: node endpoint, on its event loop (pure).

With a token configured (``[node] auth-token-env``), a request must
carry it as ``Authorization: Bearer <token>`` or as the ``token`` query
parameter (a browser's WebSocket cannot set headers, so the dashboard
passes it on in the URL it was opened with). The comparison is
``hmac.compare_digest``: its time does not depend on where the guess
first differs. Without a token every request passes; the manifest check
has already refused a non-loopback ``listen`` without one.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

# An Authorization header or query longer than this is not a token we
# issued; it is not worth decoding.
MAX_TOKEN_BYTES = 4096
# The environment variable the main process hands the endpoint its token in
# (not the command line: ``ps`` shows that to every user).
TOKEN_VARIABLE = "RUSM_NODE_TOKEN"


def offered_token(path: str, authorization: str | None) -> str | None:
    """The token a request carries (header first, then ``?token=``), or None."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value and len(value) <= MAX_TOKEN_BYTES:
            return value.strip()
    query = urlsplit(path).query
    if query and len(query) <= MAX_TOKEN_BYTES:
        values = parse_qs(query).get("token")
        if values:
            return values[0]
    return None


def authorized(expected: str, path: str, authorization: str | None) -> bool:
    """Whether a request to ``path`` with that ``Authorization`` header may pass."""
    if not expected:
        return True
    offered = offered_token(path, authorization)
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode(), expected.encode())
