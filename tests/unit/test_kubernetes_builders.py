"""The objects the Kubernetes builder backend creates, and the mTLS material it hands the pod: checked
without a cluster (tests/e2e/test_kubernetes.py runs them on one)."""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path

from cryptography import x509

from opendepot.builders.backend import BuilderSpec
from opendepot.builders.kubernetes import (
    KubernetesBuildkitd,
    KubernetesSettings,
    buildkitd_config,
    cache_volume_size,
    userns_base,
)
from opendepot.ids import new_id
from opendepot.pki.authority import Authority
from opendepot.pki.links import BuilderLinks, builder_server_name
from opendepot.projects.policy import GIB, CacheSetting
from opendepot.sealed.box import SecretKey, new_key_text
from opendepot.sealed.vault import Vault
from opendepot.store import Store


def backend(tmp_path: Path, vault: Vault | None = None, **settings: object) -> KubernetesBuildkitd:
    # Pod specs need no certificate: a vault over an empty in-memory store is never asked.
    vault = vault or Vault(Store("sqlite://"), SecretKey(new_key_text()))
    base = KubernetesSettings(kubeconfig=None, namespace="builders", image="example/buildkitd:1")
    fields = {**{f: getattr(base, f) for f in base.__dataclass_fields__}, **settings}
    return KubernetesBuildkitd(KubernetesSettings(**fields), Authority(tmp_path / "pki", vault))


def spec(hardware: str = "4x8", keep_gb: int = 40) -> BuilderSpec:
    return BuilderSpec(new_id(), "amd64", CacheSetting(keep_gb * GIB, 7), hardware)


def test_pod_limits_come_from_the_hardware_and_requests_from_the_share(tmp_path: Path) -> None:
    s = spec("4x8")
    pod = backend(tmp_path, request_share=0.25)._pod(s, {})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "1000m", "memory": "2048Mi"},
        "limits": {"cpu": "4000m", "memory": "8192Mi"},
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == f"buildkitd-{s.project_id}-amd64-cache"
    assert pod["spec"]["automountServiceAccountToken"] is False
    # Not privileged: buildkitd runs as root of its own user namespace, on host ids of this builder alone.
    container = pod["spec"]["containers"][0]
    assert "privileged" not in container["securityContext"]
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["CHOWN", "SETUID", "SETGID"],
    }
    base = userns_base(s.project_id, "amd64")
    assert container["command"][:3] == ["/usr/bin/userns-exec", str(base), "65536"]
    # A pod has no pids limit of its own: userns-exec sets RLIMIT_NPROC from this.
    assert {"name": "USERNS_NPROC", "value": "1024"} in container["env"]
    assert {"name": "USERNS_NPROC", "value": "300"} in backend(tmp_path, pids_max=300)._pod(s, {})["spec"][
        "containers"
    ][0]["env"]
    assert base >= 1 << 20 and base + 65536 <= 1 << 32
    assert userns_base(new_id(), "amd64") != base or userns_base(new_id(), "amd64") != base
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}


def test_volume_is_sized_from_the_cache_policy_with_the_storage_class(tmp_path: Path) -> None:
    assert cache_volume_size(40 * GIB) == "50Gi"
    assert cache_volume_size(1) == "1Gi"
    s = spec(keep_gb=8)
    claim = backend(tmp_path, storage_class="fast")._pvc(s, {"k": "v"})
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["metadata"]["annotations"]["opendepot.dev/cache-keep-bytes"] == str(8 * GIB)
    assert "storageClassName" not in backend(tmp_path)._pvc(s, {})["spec"]


def test_network_policy_admits_only_the_gateway_and_the_registry(tmp_path: Path) -> None:
    s = spec()
    policy = backend(
        tmp_path, gateway_cidrs=("10.0.0.5/32",), registry_cidrs=("10.0.9.0/24",), registry_port=5000
    )._network_policy(s, {})["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [
        {"from": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 1234}]}
    ]
    assert policy["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.0.9.0/24"}}], "ports": [{"protocol": "TCP", "port": 5000}]}
    ]
    # Nothing configured: no ingress and no egress at all.
    closed = backend(tmp_path)._network_policy(s, {})["spec"]
    assert closed["ingress"] == [] and closed["egress"] == []


def test_buildkitd_config_serves_only_mtls_with_the_cache_policy() -> None:
    s = spec(keep_gb=3)
    config = tomllib.loads(buildkitd_config(s, ["registry.example:5000"]))
    assert config["grpc"]["address"] == ["tcp://0.0.0.0:1234"]
    assert config["grpc"]["tls"]["ca"] == "/etc/buildkit/link-ca.pem"
    assert config["worker"]["oci"]["gcpolicy"] == [{"keepBytes": 3 * GIB, "keepDuration": "168h"}]
    assert config["worker"]["containerd"]["enabled"] is False
    assert config["registry"]["registry.example:5000"]["http"] is True


def test_builder_certificate_is_from_the_project_ca_and_clients_from_the_link_ca(
    tmp_path: Path, vault: Vault
) -> None:
    authority = Authority(tmp_path / "pki", vault)
    links = BuilderLinks(authority)
    project = new_id()
    server = links.issue_builder_server(project, "amd64")
    assert server.ca_pem == (authority.ensure_project(project) / "ca.pem").read_text()
    cert = x509.load_pem_x509_certificate(server.cert_pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [builder_server_name(project, "amd64")]
    # The gateway's client certificate verifies against the link CA, never against a project CA.
    directory = links.ensure()
    client = x509.load_pem_x509_certificate((directory / "client.pem").read_bytes())
    link_ca = x509.load_pem_x509_certificate(links.link_ca_pem().encode())
    project_ca = x509.load_pem_x509_certificate(server.ca_pem.encode())
    client.verify_directly_issued_by(link_ca)
    assert client.issuer != project_ca.subject
    assert not (directory / "ca-key.pem").exists()
    # And a TLS client context for the pod loads from those files.
    context = backend(tmp_path, vault)._client_context(project)
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_grafana_dashboard_plots_only_metrics_the_server_exports() -> None:
    import json
    import re

    from opendepot.metrics import exposition

    exported = exposition()[0].decode()
    names = set(re.findall(r"^# TYPE (\w+) ", exported, flags=re.M))
    dashboard = json.loads((Path(__file__).parents[2] / "deploy/grafana/opendepot.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"opendepot_\w+", target["expr"])
    }
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in names or name in names, f"{name} is not exported"


def test_the_builders_egress_always_names_the_registry_port(tmp_path: Path) -> None:
    """A registry host without a port is dialed on 443 (80 for a plain-HTTP one): the egress rule names that
    port, where it opened every port of the registry's addresses (the API, the gateway, PostgreSQL beside)."""
    import argparse

    from opendepot.server.background import kubernetes_backend
    from opendepot.server.config import add_arguments, resolve

    def port_of(*argv: str) -> int | None:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        config = resolve(parser.parse_args(["--data-dir", str(tmp_path), *argv]), {})
        vault = Vault(Store("sqlite://"), SecretKey(new_key_text()))
        return kubernetes_backend(config, Authority(tmp_path / "pki", vault)).settings.registry_port

    assert port_of("--registry-host", "registry.example.com") == 443
    assert port_of("--registry-host", "registry.example.com:5000") == 5000
    s = spec()
    rules = backend(tmp_path, registry_cidrs=("10.0.0.5/32",), registry_port=443)._network_policy(s, {})
    assert rules["spec"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    ]
