"""Named secrets in the store: read them, or make them once among every node (the first writer wins)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from opendepot.clock import utcnow
from opendepot.store import Store

from . import queries
from .box import SecretKey

KEY_CHECK = "secret-key-check"


@dataclass(frozen=True, slots=True)
class Secret:
    """`public` is stored in clear (certificates), `private` sealed (keys, shared secrets)."""

    public: dict[str, str] = field(default_factory=dict)
    private: dict[str, str] = field(default_factory=dict)


class Vault:
    def __init__(self, store: Store, key: SecretKey) -> None:
        self.store = store
        self.key = key

    def get(self, name: str) -> Secret | None:
        row = self.store.read_now(lambda s: queries.get(s, name))
        if row is None:
            return None
        return Secret(json.loads(row.public), json.loads(self.key.open(row.sealed, name)))

    def get_or_create(self, name: str, make: Callable[[], Secret]) -> Secret:
        """The stored secret; if there is none, `make()`'s, unless another node stored its own first (then
        that one: every node ends up with the same)."""
        found = self.get(name)
        if found is not None:
            return found
        made = make()
        sealed = self.key.seal(json.dumps(made.private).encode(), name)
        self.store.call(lambda s: queries.insert_first(s, name, json.dumps(made.public), sealed, utcnow()))
        stored = self.get(name)
        assert stored is not None, name
        return stored

    def delete(self, name: str) -> None:
        self.store.call(lambda s: queries.remove(s, name))

    def check_key(self) -> None:
        """Raises WrongSecretKey at start when this node's key is not the one the store's secrets use."""
        self.get_or_create(KEY_CHECK, lambda: Secret(private={"check": "opendepot"}))
