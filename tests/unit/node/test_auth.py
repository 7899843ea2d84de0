"""The node endpoint's token check: header, query, constant-time compare, no token."""

from __future__ import annotations

from rusmd.node.auth import MAX_TOKEN_BYTES, authorized, offered_token

TOKEN = "t0ken"


def test_no_token_configured_lets_everything_pass() -> None:
    assert authorized("", "/metrics", None)


def test_bearer_header_or_query_token_passes() -> None:
    assert authorized(TOKEN, "/api/status", f"Bearer {TOKEN}")
    assert authorized(TOKEN, "/api/status", f"bearer {TOKEN}")
    assert authorized(TOKEN, f"/attach?token={TOKEN}", None)
    assert authorized(TOKEN, f"/?a=1&token={TOKEN}", None)


def test_missing_wrong_or_other_scheme_is_refused() -> None:
    assert not authorized(TOKEN, "/", None)
    assert not authorized(TOKEN, "/", "Bearer nope")
    assert not authorized(TOKEN, "/", f"Basic {TOKEN}")
    assert not authorized(TOKEN, "/?token=", None)
    assert not authorized(TOKEN, f"/?token={TOKEN}x", None)


def test_oversized_offers_are_not_read() -> None:
    huge = "x" * (MAX_TOKEN_BYTES + 1)
    assert offered_token(f"/?token={huge}", f"Bearer {huge}") is None


def test_header_wins_over_query() -> None:
    assert offered_token("/?token=b", "Bearer a") == "a"
