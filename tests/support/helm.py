"""Helm (built once by `./dev test` / `./dev helm` into ~/.cache/opendepot/helm) and the chart it renders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/helm/opendepot"
HELM_VERSION = "v3.22.0"


def helm_binary() -> Path | None:
    configured = os.environ.get("OPENDEPOT_HELM")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opendepot/helm"
    candidate = Path(configured) if configured else cache / f"helm-{HELM_VERSION}" / "helm"
    return candidate if candidate.is_file() else None


def helm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    assert binary is not None, "no helm: ./dev helm version builds it"
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, check=False, timeout=300, env=env
    )


def render(*values: str, namespace: str = "opendepot", release: str = "opendepot") -> list[dict[str, Any]]:
    """`helm template` with --set values: the documents, or an AssertionError with helm's message."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for value in values:
        args += ["--set", value]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]
