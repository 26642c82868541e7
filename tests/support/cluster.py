"""The one-node test cluster `./dev k8s up` starts (scripts/k8s/cluster.sh), as the e2e tests find it."""

from __future__ import annotations

import os

import pytest

KUBECONFIG = os.environ.get("OPENDEPOT_TEST_KUBECONFIG", "")
# The host's address on the cluster's pod bridge `odk8s0`: where host-run gateways and registries are reached.
HOST_ON_POD_BRIDGE = "10.213.0.1"

needs_cluster = pytest.mark.skipif(
    not KUBECONFIG,
    reason=os.environ.get("OPENDEPOT_TEST_KUBERNETES_SKIP")
    or "no test cluster: set OPENDEPOT_TEST_KUBECONFIG (./dev test runs ./dev k8s up)",
)
