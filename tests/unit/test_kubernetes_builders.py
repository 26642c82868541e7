"""The objects the Kubernetes builder backend creates, and the mTLS material it hands the pod: checked
without a cluster (tests/e2e/test_kubernetes.py runs them on one)."""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from kubernetes.client.exceptions import ApiException

from opendepot.builders.backend import BuilderSpec
from opendepot.builders.kubernetes import (
    USERNS_SLOTS,
    KubernetesBuildkitd,
    KubernetesSettings,
    buildkitd_config,
    cache_volume_size,
    preferred_slot,
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
    pod = backend(tmp_path, request_share=0.25)._pod(s, {}, 7)
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
    base = userns_base(7)
    assert container["command"][:3] == ["/usr/bin/userns-exec", str(base), "65536"]
    assert pod["metadata"]["annotations"]["opendepot.dev/userns-slot"] == "7"
    # A pod has no pids limit of its own: userns-exec sets RLIMIT_NPROC from this.
    assert {"name": "USERNS_NPROC", "value": "1024"} in container["env"]
    assert {"name": "USERNS_NPROC", "value": "300"} in backend(tmp_path, pids_max=300)._pod(s, {}, 7)["spec"][
        "containers"
    ][0]["env"]
    assert userns_base(0) == 1 << 20 and userns_base(USERNS_SLOTS - 1) + 65536 <= 1 << 32
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}


def test_volume_is_sized_from_the_cache_policy_with_the_storage_class(tmp_path: Path) -> None:
    assert cache_volume_size(40 * GIB) == "50Gi"
    assert cache_volume_size(1) == "1Gi"
    s = spec(keep_gb=8)
    claim = backend(tmp_path, storage_class="fast")._pvc(s, {"k": "v"}, 3)
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["metadata"]["annotations"]["opendepot.dev/cache-keep-bytes"] == str(8 * GIB)
    # Its files belong to the slot's ids: the volume says which, for the builder's next start.
    assert claim["metadata"]["annotations"]["opendepot.dev/userns-slot"] == "3"
    assert "storageClassName" not in backend(tmp_path)._pvc(s, {}, 3)["spec"]


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


class SlotsApi:
    """The part of CoreV1Api that slot claims use: config maps and volumes, kept in dicts. Creating a config
    map that exists is a 409, as on the API server; `raced` names slots another server claims between the
    list and the create."""

    def __init__(self) -> None:
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.raced: set[str] = set()

    @staticmethod
    def _object(body: dict[str, Any]) -> Any:
        meta = body["metadata"]
        return SimpleNamespace(
            metadata=SimpleNamespace(
                name=meta["name"], labels=meta.get("labels"), annotations=meta.get("annotations")
            )
        )

    def list_namespaced_config_map(self, namespace: str, label_selector: str) -> Any:
        assert label_selector == "app.kubernetes.io/managed-by=opendepot,opendepot.dev/userns-slot"
        return SimpleNamespace(items=[self._object(body) for body in self.config_maps.values()])

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if name in self.raced:
            self.raced.discard(name)
            self.config_maps[name] = {"metadata": {"name": name, "labels": {}}}
        if name in self.config_maps:
            raise ApiException(status=409)
        self.config_maps[name] = body

    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str) -> Any:
        if name not in self.volumes:
            raise ApiException(status=404)
        return self._object(self.volumes[name])

    def delete_namespaced_persistent_volume_claim(self, name: str, namespace: str) -> None:
        if self.volumes.pop(name, None) is None:
            raise ApiException(status=404)


def slots_backend(tmp_path: Path) -> tuple[KubernetesBuildkitd, SlotsApi]:
    api = SlotsApi()
    k8s = backend(tmp_path)
    k8s._core = lambda: api  # type: ignore[method-assign]
    return k8s, api


def colliding_projects() -> tuple[str, str]:
    """Two project ids whose builders would start their search for a slot at the same one."""
    first: dict[int, str] = {}
    while True:
        project = new_id()
        slot = preferred_slot(project, "amd64")
        if slot in first:
            return first[slot], project
        first[slot] = project


def labels_of(project: str) -> dict[str, str]:
    return {"opendepot.dev/project": project, "opendepot.dev/platform": "amd64"}


def test_two_builders_whose_preferred_slots_collide_get_their_own(tmp_path: Path) -> None:
    k8s, api = slots_backend(tmp_path)
    one, two = colliding_projects()
    preferred = preferred_slot(one, "amd64")
    first = k8s._userns_slot(BuilderSpec(one, "amd64", CacheSetting(GIB, 7), "2x4"), labels_of(one))
    second = k8s._userns_slot(BuilderSpec(two, "amd64", CacheSetting(GIB, 7), "2x4"), labels_of(two))
    assert first == preferred and second == (preferred + 1) % USERNS_SLOTS
    assert userns_base(first) + 65536 <= userns_base(second)
    # Each builder's claim names its slot and its builder; a second start finds its own claim.
    assert api.config_maps[f"userns-slot-{second}"]["metadata"]["labels"] == {
        **labels_of(two),
        "opendepot.dev/userns-slot": str(second),
    }
    assert k8s._userns_slot(BuilderSpec(two, "amd64", CacheSetting(GIB, 7), "2x4"), labels_of(two)) == second
    assert len(api.config_maps) == 2


def test_a_slot_claimed_by_another_server_since_the_list_is_skipped(tmp_path: Path) -> None:
    k8s, api = slots_backend(tmp_path)
    project = new_id()
    preferred = preferred_slot(project, "amd64")
    api.raced.add(f"userns-slot-{preferred}")
    slot = k8s._userns_slot(BuilderSpec(project, "amd64", CacheSetting(GIB, 7), "2x4"), labels_of(project))
    assert slot == (preferred + 1) % USERNS_SLOTS


def test_a_volume_keeps_its_slot_and_loses_its_files_only_when_another_builder_holds_it(
    tmp_path: Path,
) -> None:
    k8s, api = slots_backend(tmp_path)
    one, two = colliding_projects()
    preferred = preferred_slot(one, "amd64")
    spec_two = BuilderSpec(two, "amd64", CacheSetting(GIB, 7), "2x4")
    volume = f"buildkitd-{two}-amd64-cache"
    # A volume made before slot claims (no annotation) used the preferred slot: free, it is claimed and kept.
    api.volumes[volume] = {"metadata": {"name": volume, "annotations": {}}}
    assert k8s._userns_slot(spec_two, labels_of(two)) == preferred
    assert volume in api.volumes
    # A volume recorded in a slot that another builder now holds: its files are owned by that builder's
    # ids, so the volume goes and the builder starts empty in a free slot.
    api.config_maps.clear()
    k8s._userns_slot(BuilderSpec(one, "amd64", CacheSetting(GIB, 7), "2x4"), labels_of(one))
    slot = k8s._userns_slot(spec_two, labels_of(two))
    assert slot != preferred and volume not in api.volumes


def test_an_operator_caps_the_cache_volume_and_buildkit_keeps_less_than_it(tmp_path: Path) -> None:
    """--builder-disk-max-mib caps the volume a project's policy asks for; BuildKit's GC then aims at four
    fifths of it (aiming above the volume, GC would never run before the volume filled)."""
    s = spec(keep_gb=400)
    claim = backend(tmp_path, disk_max_bytes=64 * GIB)._pvc(s, {}, 1)
    assert claim["spec"]["resources"]["requests"]["storage"] == "64Gi"
    config = tomllib.loads(buildkitd_config(s, [], 64 * GIB))
    assert config["worker"]["oci"]["gckeepstorage"] == 64 * GIB * 4 // 5
    assert cache_volume_size(GIB, 300 << 20) == "300Mi"
    # Under the cap nothing changes: the policy plus a quarter, and the policy for the GC.
    assert tomllib.loads(buildkitd_config(spec(keep_gb=8), []))["worker"]["oci"]["gckeepstorage"] == 8 * GIB
