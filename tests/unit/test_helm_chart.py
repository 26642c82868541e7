"""deploy/helm/opendepot: `helm lint` and `helm template`; tests/e2e/test_deploy.py installs it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.helm import CHART, helm, helm_binary, render

pytestmark = pytest.mark.skipif(
    helm_binary() is None, reason="no helm built yet: ./dev test (or ./dev helm version) builds it once"
)


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = by_kind(documents, "Deployment")
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(main)


def env_of(main: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}


def test_the_chart_lints_strictly() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_defaults_render_one_sqlite_replica_with_rbac_only_in_the_builder_namespace() -> None:
    documents = render()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
    assert kinds == [
        "Deployment/opendepot",
        "Namespace/opendepot-builders",
        "NetworkPolicy/opendepot-builders",
        "PersistentVolumeClaim/opendepot-data",
        "Role/opendepot-builders",
        "RoleBinding/opendepot-builders",
        "Service/opendepot-api",
        "Service/opendepot-gateway",
        "Service/opendepot-registry",
        "ServiceAccount/opendepot",
    ]
    [role] = by_kind(documents, "Role")
    assert role["metadata"]["namespace"] == "opendepot-builders"
    assert {r for rule in role["rules"] for r in rule["resources"]} == {
        "pods",
        "persistentvolumeclaims",
        "secrets",
        "configmaps",  # the builders' user-namespace slot claims
        "networkpolicies",
    }
    [binding] = by_kind(documents, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "opendepot", "namespace": "opendepot"}]
    [deployment] = by_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "opendepot"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    main = container(documents)
    assert main["image"] == "registry.example.com/opendepot/opendepot:0.1.0"
    assert "--builders=kubernetes" in main["args"] and "--namespace=opendepot-builders" in main["args"]
    env = env_of(main)
    # No database secret: SQLite in the data dir on the volume.
    assert "OPENDEPOT_DATABASE_URL" not in env and "OPENDEPOT_SECRET_KEY" not in env
    assert env["OPENDEPOT_BUILDKIT_HOST"] == "$(POD_IP)"
    services = {d["metadata"]["name"]: d["spec"]["ports"][0] for d in by_kind(documents, "Service")}
    assert services["opendepot-gateway"]["targetPort"] == "gateway"
    assert services["opendepot-api"]["targetPort"] == "api"
    assert services["opendepot-registry"]["targetPort"] == "registry"
    [policy] = by_kind(documents, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 1234}]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "opendepot",
        "app.kubernetes.io/instance": "opendepot",
    }


def test_values_reach_the_server_postgresql_from_a_secret() -> None:
    documents = render(
        "database.existingSecret=opendepot-db",
        "secretKey.existingSecret=opendepot-key",
        "replicaCount=3",
        "builders.namespace=ci-builders",
        "builders.createNamespace=false",
        "builders.image=reg.example/p/buildkitd:v1",
        "builders.storageClass=fast",
        "gatewayHost=buildkit.example.com",
        "image.repository=reg.example/p/opendepot",
        "image.tag=9.9.9",
        release="ci",
        namespace="depot",
    )
    assert not by_kind(documents, "Namespace")
    [role] = by_kind(documents, "Role")
    assert role["metadata"] == {
        **role["metadata"],
        "name": "ci-opendepot-builders",
        "namespace": "ci-builders",
    }
    [deployment] = by_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 3 and "strategy" not in deployment["spec"]
    main = container(documents)
    assert main["image"] == "reg.example/p/opendepot:9.9.9"
    for arg in (
        "--namespace=ci-builders",
        "--builder-image=reg.example/p/buildkitd:v1",
        "--storage-class=fast",
    ):
        assert arg in main["args"]
    env = env_of(main)
    assert env["OPENDEPOT_DATABASE_URL"] == {"secretKeyRef": {"name": "opendepot-db", "key": "url"}}
    assert env["OPENDEPOT_SECRET_KEY"] == {"secretKeyRef": {"name": "opendepot-key", "key": "key"}}
    assert env["OPENDEPOT_BUILDKIT_HOST"] == "buildkit.example.com"
    [claim] = by_kind(documents, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_several_replicas_without_postgresql_or_a_shared_secret_key_are_refused() -> None:
    result = helm("template", "x", str(CHART), "--set", "replicaCount=2")
    assert result.returncode != 0
    assert "replicaCount > 1 needs database.existingSecret" in result.stderr
    result = helm("template", "x", str(CHART), "--set", "replicaCount=2,database.existingSecret=db")
    assert result.returncode != 0
    assert "replicaCount > 1 needs secretKey.existingSecret" in result.stderr
