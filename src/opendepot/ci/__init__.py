"""CI providers whose OIDC tokens opendepot accepts: one module per provider, each with its issuer, the
fields of a trust policy (checked when a policy is added) and when a token's identity matches one. Claim
names are the providers' own (spec §2.5). A new provider is a module here plus a line in PROVIDERS."""

from __future__ import annotations

from collections.abc import Mapping

from . import buildkite, circleci, github, gitlab
from .identity import Identity, Provider

# name -> module, in the order users see them.
PROVIDERS: Mapping[str, Provider] = {m.NAME: m for m in (github, buildkite, circleci, gitlab)}
DEFAULT_ISSUERS: dict[str, str] = {name: m.DEFAULT_ISSUER for name, m in PROVIDERS.items()}

__all__ = ["DEFAULT_ISSUERS", "PROVIDERS", "Identity", "Provider"]
