"""The SDK and the `opendepot` CLI never fall back to Depot's hosted API (issue 14): without DEPOT_API_URL
they talk to the opendepot server on this machine."""

from __future__ import annotations

import pytest

from opendepot import client


def test_no_api_url_means_the_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPOT_API_URL", raising=False)
    monkeypatch.setenv("DEPOT_TOKEN", "a-token-the-user-has-for-depot")
    url, token = client._settings(None, None)
    assert url == "http://127.0.0.1:8080"
    assert "depot.dev" not in url and token == "a-token-the-user-has-for-depot"


def test_an_explicit_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_API_URL", "http://127.0.0.1:9999/")
    assert client._settings(None, None)[0] == "http://127.0.0.1:9999"
