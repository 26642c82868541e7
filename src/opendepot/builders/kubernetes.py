"""Builders as Kubernetes pods: `opendepot serve --builders kubernetes --kubeconfig PATH --namespace NS`.

Per (project, platform), in the namespace opendepot manages:
- a PersistentVolumeClaim `<name>-cache` holding buildkitd's state, sized from the project's cache policy; it
  outlives the pod (idle builders go to zero pods, their cache stays) and goes on ResetProject/DeleteProject;
- a Secret `<name>-tls`: buildkitd.toml, the builder's TLS server certificate from its project's CA, and the
  link CA that signs only the gateway's client certificate (pki/links.py);
- a Pod `<name>` running stock buildkitd from an image opendepot builds (scripts/k8s/image-roots.sh), with
  CPU/memory limits from the project's hardware; its only door is buildkitd's mTLS listener on BUILDKIT_PORT,
  which the gateway dials over the cluster network (no Service, no NodePort);
- a NetworkPolicy `<name>`: ingress only from the gateway's addresses, egress only to the registry's;
- a ConfigMap `userns-slot-<n>`: its claim on a user-namespace slot (_userns_slot), which lives as long as
  the volume, whose files belong to that slot's host ids.

Every object carries `app.kubernetes.io/managed-by=opendepot` and `opendepot.dev/project|platform` labels, so
`kubectl get all,pvc,secret,networkpolicy,configmap -l opendepot.dev/project=<id>` shows what belongs to a
project.

The Kubernetes client is blocking: every call runs in a thread. A watch thread keeps the pods' phase and IP
for `alive()` (called every manager tick) and `open()`."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opendepot.builders.backend import (
    DEFAULT_DISK_MAX_BYTES,
    BuilderSpec,
    RecordedBuilder,
    cache_volume_bytes,
    gc_keep_bytes,
)
from opendepot.builders.buildctl import answers, cache_bytes, prune_to
from opendepot.builders.cgroups import hardware_size
from opendepot.pki.authority import Authority
from opendepot.pki.links import BuilderLinks, builder_server_name
from opendepot.projects.policy import GIB

log = logging.getLogger("opendepot.builders.kubernetes")

BUILDKIT_PORT = 1234
POD_CONNECT_TIMEOUT = 10.0  # seconds for the TCP connect and the TLS handshake to a builder pod
MANAGED_BY = "app.kubernetes.io/managed-by"
PROJECT_LABEL = "opendepot.dev/project"
PLATFORM_LABEL = "opendepot.dev/platform"
SELECTOR = f"{MANAGED_BY}=opendepot,app.kubernetes.io/component=builder"
# A pod that the watch has not reported yet counts as alive this long after it was created.
CREATE_GRACE_SECONDS = 15.0
USERNS_FIRST = 1 << 20
USERNS_SIZE = 65536
USERNS_SLOTS = 30000
SLOT_LABEL = "opendepot.dev/userns-slot"
SLOT_ANNOTATION = SLOT_LABEL
SLOT_SELECTOR = f"{MANAGED_BY}=opendepot,{SLOT_LABEL}"
DELETE_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    kubeconfig: str | None  # None: in-cluster service account
    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    storage_class: str | None = None  # None: the cluster's default StorageClass
    # Requests are this share of the project's hardware (limits are all of it), so that builders of big
    # hardware sizes still schedule on small nodes; 1.0 gives Guaranteed pods.
    request_share: float = 1 / 32
    gateway_cidrs: tuple[str, ...] = ()  # NetworkPolicy ingress; empty: from nowhere but the node
    registry_cidrs: tuple[str, ...] = ()  # NetworkPolicy egress
    registry_port: int | None = None
    insecure_registries: tuple[str, ...] = ()
    # Processes and threads of one builder (buildkitd and its RUN steps), as --builder-pids-max for local
    # builders: a pod has no pids limit of its own unless the kubelet sets podPidsLimit.
    pids_max: int = 1024
    # A builder's cache volume: sized from its project's cache policy, at most this (--builder-disk-max-mib).
    disk_max_bytes: int = DEFAULT_DISK_MAX_BYTES
    # The supervisor's questions to a pod's BuildKit (cache size, ListWorkers, a prune) go through buildctl.
    buildctl: str = "buildctl"


@dataclass(frozen=True, slots=True)
class PodState:
    phase: str
    ip: str | None
    deleting: bool

    @property
    def usable(self) -> bool:
        return not self.deleting and self.phase in ("Pending", "Running")


def object_name(project_id: str, platform: str) -> str:
    # Project ids are 10 characters of [0-9b-z] (ids.py): valid DNS-1123 labels as they are.
    return f"buildkitd-{project_id}-{platform}"


def _key_of(labels: dict[str, str] | None) -> tuple[str, str] | None:
    if not labels or PROJECT_LABEL not in labels or PLATFORM_LABEL not in labels:
        return None
    return labels[PROJECT_LABEL], labels[PLATFORM_LABEL]


def preferred_slot(project_id: str, platform: str) -> int:
    """Where the search for a builder's free slot starts (and the slot of volumes made before claims)."""
    return zlib.crc32(f"{project_id}/{platform}".encode()) % USERNS_SLOTS


def userns_base(slot: int) -> int:
    """The first host id of a slot: 65536 ids above the ids hosts give people and services."""
    return USERNS_FIRST + slot * USERNS_SIZE


def claim_name(slot: int) -> str:
    return f"userns-slot-{slot}"


def _key_labels(project_id: str, platform: str) -> dict[str, str]:
    return {PROJECT_LABEL: project_id, PLATFORM_LABEL: platform}


def _cpu(value: float) -> str:
    return f"{max(1, math.ceil(value * 1000))}m"


def _memory(gib: float) -> str:
    return f"{max(64, math.ceil(gib * 1024))}Mi"


def cache_volume_size(keep_bytes: int, max_bytes: int = DEFAULT_DISK_MAX_BYTES) -> str:
    """cache_volume_bytes as a quantity: a policy's size, at most the operator's --builder-disk-max-mib."""
    size = cache_volume_bytes(keep_bytes, max_bytes)
    return f"{size // GIB}Gi" if size % GIB == 0 else f"{-(-size // (1 << 20))}Mi"


def buildkitd_config(
    spec: BuilderSpec, insecure_registries: Sequence[str], disk_max_bytes: int = DEFAULT_DISK_MAX_BYTES
) -> str:
    keep_bytes = gc_keep_bytes(spec.cache.keep_bytes, disk_max_bytes)
    lines = [
        'root = "/var/lib/buildkit"',
        "[grpc]",
        f'  address = ["tcp://0.0.0.0:{BUILDKIT_PORT}"]',
        "  [grpc.tls]",
        '    cert = "/etc/buildkit/server.pem"',
        '    key = "/etc/buildkit/server-key.pem"',
        # With a CA, buildkitd requires and verifies client certificates: only the gateway's verify.
        '    ca = "/etc/buildkit/link-ca.pem"',
        "[worker.oci]",
        "  enabled = true",
        "  gc = true",
        f"  gckeepstorage = {keep_bytes}",
        "  [[worker.oci.gcpolicy]]",
        f"    keepBytes = {keep_bytes}",
    ]
    if spec.cache.keep_days:
        lines.append(f'    keepDuration = "{spec.cache.keep_days * 24}h"')
    lines += ["[worker.containerd]", "  enabled = false"]
    lines += [f'[registry."{host}"]\n  http = true' for host in insecure_registries]
    return "\n".join(lines) + "\n"


class KubernetesBuildkitd:
    """The builder Backend on Kubernetes (see the module docstring)."""

    def __init__(self, settings: KubernetesSettings, authority: Authority, api: Any | None = None) -> None:
        self.settings = settings
        self.authority = authority
        self.links = BuilderLinks(authority)
        self._api_client = api
        self._pods: dict[tuple[str, str], PodState] = {}
        self._created: dict[tuple[str, str], float] = {}
        self._gc_targets: dict[tuple[str, str], int] = {}  # BuildKit's GC target per builder it started
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- the Kubernetes API (blocking; always called through _call) ---

    def _client(self) -> Any:
        if self._api_client is None:
            from kubernetes import config as kube_config

            if self.settings.kubeconfig:
                self._api_client = kube_config.new_client_from_config(config_file=self.settings.kubeconfig)
            else:
                kube_config.load_incluster_config()
                from kubernetes import client

                self._api_client = client.ApiClient()
        return self._api_client

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._client())

    def _networking(self) -> Any:
        from kubernetes import client

        return client.NetworkingV1Api(self._client())

    @staticmethod
    async def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, *args, **kwargs)

    # --- the Backend interface ---

    async def start(self, spec: BuilderSpec) -> int:
        key = (spec.project_id, spec.platform)
        self._ensure_watch()
        await asyncio.to_thread(self._start, spec)
        self._created[key] = time.monotonic()
        self._gc_targets[key] = gc_keep_bytes(spec.cache.keep_bytes, self.settings.disk_max_bytes)
        return 0  # no local process: the pod is the builder

    def _start(self, spec: BuilderSpec) -> None:
        from kubernetes.client.exceptions import ApiException

        core = self._core()
        ns = self.settings.namespace
        name = object_name(spec.project_id, spec.platform)
        try:
            existing = core.read_namespaced_pod(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            existing = None
        if existing is not None:
            state = _pod_state(existing)
            if state.usable:
                log.info("builder %s/%s: adopting pod %s", spec.project_id, spec.platform, name)
                return
            # A pod that failed (or was killed) is replaced on the same volume.
            self._delete_pod_and_wait(name)
        labels = self._labels(spec.project_id, spec.platform)
        slot = self._userns_slot(spec, labels)
        _create_if_absent(
            lambda: core.create_namespaced_persistent_volume_claim(ns, self._pvc(spec, labels, slot))
        )
        self._apply_secret(spec, labels)
        self._apply_network_policy(spec, labels)
        core.create_namespaced_pod(ns, self._pod(spec, labels, slot))
        log.info("builder %s/%s: created pod %s in %s", spec.project_id, spec.platform, name, ns)

    def _userns_slot(self, spec: BuilderSpec, labels: dict[str, str]) -> int:
        """The builder's own user-namespace slot: 65536 host ids no other builder in the namespace has (two
        builders on one slot run as the same host ids: a RUN step out of its mount namespace would own the
        other's files and processes). A slot is claimed by creating the ConfigMap named after it, which the
        API server lets only one caller do, so two servers never take one slot. The volume records its slot:
        its files belong to those ids, so a builder keeps its slot while its volume lives."""
        from kubernetes.client.exceptions import ApiException

        core, ns = self._core(), self.settings.namespace
        volume_slot: int | None = None
        try:
            volume = core.read_namespaced_persistent_volume_claim(
                object_name(spec.project_id, spec.platform) + "-cache", ns
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            # Volumes made before claims carry no slot: theirs was the preferred one.
            recorded = (volume.metadata.annotations or {}).get(SLOT_ANNOTATION)
            volume_slot = int(recorded) if recorded else preferred_slot(spec.project_id, spec.platform)
        claims = core.list_namespaced_config_map(ns, label_selector=SLOT_SELECTOR).items
        taken = {int(claim.metadata.labels[SLOT_LABEL]) for claim in claims}
        mine = {
            int(claim.metadata.labels[SLOT_LABEL])
            for claim in claims
            if _key_of(claim.metadata.labels) == (spec.project_id, spec.platform)
        }
        if volume_slot is not None and (
            volume_slot in mine or (volume_slot not in taken and self._claim(volume_slot, labels))
        ):
            return volume_slot
        if mine:
            slot = min(mine)
        else:
            slot = self._claim_free_slot(preferred_slot(spec.project_id, spec.platform), taken, labels)
        if volume_slot is not None:
            # The volume's ids are another builder's now: its files would not be this builder's own.
            log.warning(
                "builder %s/%s: its volume's user-namespace slot %d is another builder's; starting on an "
                "empty volume in slot %d",
                spec.project_id,
                spec.platform,
                volume_slot,
                slot,
            )
            self._delete_volume_and_wait(object_name(spec.project_id, spec.platform) + "-cache")
        return slot

    def _claim_free_slot(self, start: int, taken: set[int], labels: dict[str, str]) -> int:
        for step in range(USERNS_SLOTS):
            slot = (start + step) % USERNS_SLOTS
            if slot not in taken and self._claim(slot, labels):
                return slot
        raise RuntimeError(f"all {USERNS_SLOTS} user-namespace slots are claimed")

    def _claim(self, slot: int, labels: dict[str, str]) -> bool:
        """False when another builder holds the slot (claimed since the list, by this or another server)."""
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": claim_name(slot), "labels": {**labels, SLOT_LABEL: str(slot)}},
        }
        try:
            self._core().create_namespaced_config_map(self.settings.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    async def ready(self, project_id: str, platform: str) -> bool:
        state = self._pods.get((project_id, platform))
        if state is None or state.phase != "Running" or not state.ip or state.deleting:
            return False
        try:
            connecting = self.connect(project_id, platform, asyncio.Protocol)
            transport = await asyncio.wait_for(connecting, timeout=2)
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        transport.close()
        return True

    def alive(self, project_id: str, platform: str) -> bool:
        key = (project_id, platform)
        state = self._pods.get(key)
        if state is not None:
            return state.usable
        created = self._created.get(key)
        return created is not None and time.monotonic() - created < CREATE_GRACE_SECONDS

    async def stop(self, project_id: str, platform: str) -> None:
        """Zero pods; the volume (the cache) stays."""
        self._created.pop((project_id, platform), None)
        self._gc_targets.pop((project_id, platform), None)
        await asyncio.to_thread(self._delete_pod_and_wait, object_name(project_id, platform))

    async def discard(self, project_id: str, platform: str) -> None:
        """Everything of this builder, its cache volume included (ResetProject, DeleteProject)."""
        await self.stop(project_id, platform)
        await asyncio.to_thread(self._delete_all, f"{PROJECT_LABEL}={project_id},{PLATFORM_LABEL}={platform}")

    async def prune(self, keep_projects: Callable[[], Awaitable[set[str]]]) -> int:
        """Deletes the objects of projects that no longer exist. The store is read after the cluster, so a
        project created in between is never mistaken for a deleted one."""
        core, ns = self._core(), self.settings.namespace
        volumes = await self._call(core.list_namespaced_persistent_volume_claim, ns, label_selector=SELECTOR)
        slots = await self._call(core.list_namespaced_config_map, ns, label_selector=SLOT_SELECTOR)
        seen = {
            (item.metadata.labels or {}).get(PROJECT_LABEL) for item in [*volumes.items, *slots.items]
        } - {None}
        gone = seen - await keep_projects()
        for project_id in gone:
            await asyncio.to_thread(self._delete_all, f"{PROJECT_LABEL}={project_id}")
        return len(gone)

    async def _pod_ip(self, project_id: str, platform: str) -> str:
        """The address of the builder's running pod, or ConnectionRefusedError."""
        state = self._pods.get((project_id, platform))
        if state is None:
            # Another node may run this builder (several opendepot nodes): ask the cluster, and keep watching.
            self._ensure_watch()
            state = await asyncio.to_thread(self._read_state, object_name(project_id, platform))
        if state is None or not state.ip or not state.usable:
            raise ConnectionRefusedError(f"builder {project_id}/{platform} has no running pod")
        return state.ip

    async def connect(
        self, project_id: str, platform: str, protocol: Callable[[], asyncio.BaseProtocol]
    ) -> asyncio.Transport:
        ip = await self._pod_ip(project_id, platform)
        transport, _ = await asyncio.get_running_loop().create_connection(
            protocol,
            ip,
            BUILDKIT_PORT,
            ssl=self._client_context(project_id),
            server_hostname=builder_server_name(project_id, platform),
        )
        return transport

    async def connect_socket(self, project_id: str, platform: str) -> socket.socket:
        ip = await self._pod_ip(project_id, platform)
        context = self._client_context(project_id)
        server_name = builder_server_name(project_id, platform)

        def connected() -> socket.socket:
            # Our own pod on the cluster network: a blocking connect and handshake in a thread, bounded.
            raw = socket.create_connection((ip, BUILDKIT_PORT), timeout=POD_CONNECT_TIMEOUT)
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                tls = context.wrap_socket(raw, server_hostname=server_name)
            except BaseException:
                raw.close()
                raise
            tls.setblocking(False)
            return tls

        return await asyncio.to_thread(connected)

    async def disk_usage(self, project_id: str, platform: str) -> int | None:
        """The cache size as the pod's buildkitd reports it (`buildctl du` over the same mTLS link)."""
        address = await self._buildctl_address(project_id, platform)
        return None if address is None else await cache_bytes(self.settings.buildctl, address)

    async def _buildctl_address(self, project_id: str, platform: str) -> list[str] | None:
        """buildctl's flags to reach the builder's pod over the project's mTLS link; None without a pod."""
        state = self._pods.get((project_id, platform))
        if state is None or not state.ip:
            return None
        links = await asyncio.to_thread(self.links.ensure)
        project_ca = await asyncio.to_thread(self.authority.ensure_project, project_id)
        return [
            "--addr",
            f"tcp://{state.ip}:{BUILDKIT_PORT}",
            "--tlsservername",
            builder_server_name(project_id, platform),
            "--tlscacert",
            str(project_ca / "ca.pem"),
            "--tlscert",
            str(links / "client.pem"),
            "--tlskey",
            str(links / "client-key.pem"),
        ]

    async def relieve(self, project_id: str, platform: str) -> int | None:
        """After its builds, a cache BuildKit reports over its GC target is pruned down to it now (`buildctl
        prune --keep-storage`), where BuildKit's own GC runs at most once a minute: a build that brought the
        volume near full leaves the next one room at once. The volume's fill is not visible from here (it is
        the pod's), so BuildKit's own count decides: one `buildctl du` after the builds, a prune only when
        over."""
        key = (project_id, platform)
        target = self._gc_targets.get(key)
        address = await self._buildctl_address(*key)
        if target is None or address is None:
            return None
        used = await cache_bytes(self.settings.buildctl, address)
        if used is None or used <= target:
            return None
        if not await prune_to(self.settings.buildctl, address, target):
            return None
        after = await cache_bytes(self.settings.buildctl, address)
        return None if after is None else max(0, used - after)

    async def responsive(self, project_id: str, platform: str, answer_within: float) -> bool:
        """Whether the pod's BuildKit answers ListWorkers within answer_within seconds (the pod's readiness
        probe only sees a TCP accept, which a wedged buildkitd still does)."""
        address = await self._buildctl_address(project_id, platform)
        if address is None:
            return True  # no pod to ask: the pod watch, not this probe, says whether it lives
        return await answers(self.settings.buildctl, address, within=answer_within)

    async def reap_leftovers(self, recorded: Sequence[RecordedBuilder]) -> None:
        """At start: every builder pod in the namespace goes, also those no row records (volumes stay)."""
        self._ensure_watch()  # the gateway may open builders before this node starts one
        await self.stop_everything()

    async def stop_everything(self) -> None:
        listed = await self._call(
            self._core().list_namespaced_pod, self.settings.namespace, label_selector=SELECTOR
        )
        await asyncio.gather(
            *(asyncio.to_thread(self._delete_pod_and_wait, pod.metadata.name) for pod in listed.items)
        )

    async def stop_all(self) -> None:
        """At server shutdown: builder pods go (zero pods), volumes stay."""
        keys = [key for key, state in self._pods.items() if state.usable]
        await asyncio.gather(*(self.stop(*key) for key in keys), return_exceptions=True)
        self._closing.set()

    # --- objects ---

    def _labels(self, project_id: str, platform: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "buildkitd",
            "app.kubernetes.io/component": "builder",
            MANAGED_BY: "opendepot",
            PROJECT_LABEL: project_id,
            PLATFORM_LABEL: platform,
        }

    def _metadata(self, name: str, labels: dict[str, str], spec: BuilderSpec) -> dict[str, Any]:
        return {
            "name": name,
            "labels": labels,
            "annotations": {
                "opendepot.dev/hardware": spec.hardware,
                "opendepot.dev/cache-keep-bytes": str(spec.cache.keep_bytes),
                "opendepot.dev/cache-keep-days": str(spec.cache.keep_days),
            },
        }

    def _pvc(self, spec: BuilderSpec, labels: dict[str, str], slot: int) -> dict[str, Any]:
        metadata = self._metadata(object_name(spec.project_id, spec.platform) + "-cache", labels, spec)
        metadata["annotations"][SLOT_ANNOTATION] = str(slot)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {
                    "requests": {
                        "storage": cache_volume_size(spec.cache.keep_bytes, self.settings.disk_max_bytes)
                    }
                },
            },
        }
        if self.settings.storage_class:
            body["spec"]["storageClassName"] = self.settings.storage_class
        return body

    def _apply_secret(self, spec: BuilderSpec, labels: dict[str, str]) -> None:
        """The builder's TLS material and config; rewritten on each start so a changed cache policy or an
        insecure registry setting takes effect."""
        from kubernetes.client.exceptions import ApiException

        server = self.links.issue_builder_server(spec.project_id, spec.platform)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._metadata(object_name(spec.project_id, spec.platform) + "-tls", labels, spec),
            "type": "Opaque",
            "stringData": {
                "buildkitd.toml": buildkitd_config(
                    spec, self.settings.insecure_registries, self.settings.disk_max_bytes
                ),
                "server.pem": server.cert_pem,
                "server-key.pem": server.key_pem,
                "link-ca.pem": self.links.link_ca_pem(),
            },
        }
        core = self._core()
        try:
            core.create_namespaced_secret(self.settings.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(body["metadata"]["name"], self.settings.namespace, body)

    def _apply_network_policy(self, spec: BuilderSpec, labels: dict[str, str]) -> None:
        """Rewritten on each start, as the secret is: an operator who narrows the registry's addresses or
        port narrows every project's builder at its next start, not only new projects'."""
        from kubernetes.client.exceptions import ApiException

        body = self._network_policy(spec, labels)
        networking = self._networking()
        try:
            networking.create_namespaced_network_policy(self.settings.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            networking.replace_namespaced_network_policy(
                body["metadata"]["name"], self.settings.namespace, body
            )

    def _resources(self, hardware: str) -> dict[str, dict[str, str]]:
        cpus, memory_gb = hardware_size(hardware)
        share = self.settings.request_share
        return {
            "requests": {"cpu": _cpu(cpus * share), "memory": _memory(memory_gb * share)},
            "limits": {"cpu": _cpu(cpus), "memory": _memory(memory_gb)},
        }

    def _pod(self, spec: BuilderSpec, labels: dict[str, str], slot: int) -> dict[str, Any]:
        name = object_name(spec.project_id, spec.platform)
        base = userns_base(slot)
        metadata = self._metadata(name, labels, spec)
        metadata["annotations"][SLOT_ANNOTATION] = str(slot)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "dnsPolicy": "Default",
                # A builder that exits stays down: the manager sees it and starts a new one on the next lease.
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "nodeSelector": {"kubernetes.io/arch": spec.platform},
                # The secret's files are readable by the builder's group, which is the user namespace's root
                # group on the host (see userns_ids).
                "securityContext": {"fsGroup": base, "seccompProfile": {"type": "Unconfined"}},
                "containers": [
                    {
                        "name": "buildkitd",
                        "image": self.settings.image,
                        "imagePullPolicy": self.settings.image_pull_policy,
                        # Not a privileged pod: userns-exec (scripts/k8s/userns-exec.c) runs buildkitd as
                        # root of its own user namespace, whose ids are unprivileged host ids of this builder
                        # alone; RUN steps run in it. (hostUsers: false would do it in the kubelet, but needs
                        # containerd >= 2.0; Debian's 1.6 refuses it.) Seccomp is off for unshare/mount in
                        # that namespace; the only capabilities are those to set up the mapping.
                        "command": [
                            "/usr/bin/userns-exec",
                            str(base),
                            str(USERNS_SIZE),
                            "/var/lib/buildkit",
                            "/run",
                            "--",
                            "/usr/bin/buildkitd",
                            "--rootless",
                            "--oci-worker-no-process-sandbox",
                            "--config",
                            "/etc/buildkit/buildkitd.toml",
                        ],
                        "env": [
                            {"name": "XDG_RUNTIME_DIR", "value": "/run"},
                            # userns-exec sets RLIMIT_NPROC: the builder's host ids are its own, and root of
                            # its user namespace cannot raise the limit (a fork bomb in a RUN step otherwise
                            # took every process of the node).
                            {"name": "USERNS_NPROC", "value": str(self.settings.pids_max)},
                        ],
                        "ports": [{"name": "buildkit", "containerPort": BUILDKIT_PORT}],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "SETUID", "SETGID"]},
                        },
                        "resources": self._resources(spec.hardware),
                        "readinessProbe": {"tcpSocket": {"port": BUILDKIT_PORT}, "periodSeconds": 2},
                        "volumeMounts": [
                            {"name": "cache", "mountPath": "/var/lib/buildkit"},
                            {"name": "config", "mountPath": "/etc/buildkit", "readOnly": True},
                            {"name": "run", "mountPath": "/run"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "cache", "persistentVolumeClaim": {"claimName": name + "-cache"}},
                    {"name": "config", "secret": {"secretName": name + "-tls", "defaultMode": 0o440}},
                    {"name": "run", "emptyDir": {}},
                ],
            },
        }

    def _network_policy(self, spec: BuilderSpec, labels: dict[str, str]) -> dict[str, Any]:
        ingress_from = [{"ipBlock": {"cidr": cidr}} for cidr in self.settings.gateway_cidrs]
        egress: list[dict[str, Any]] = []
        if self.settings.registry_cidrs:
            rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": c}} for c in self.settings.registry_cidrs]}
            if self.settings.registry_port:
                rule["ports"] = [{"protocol": "TCP", "port": self.settings.registry_port}]
            egress.append(rule)
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self._metadata(object_name(spec.project_id, spec.platform), labels, spec),
            "spec": {
                "podSelector": {
                    "matchLabels": {PROJECT_LABEL: spec.project_id, PLATFORM_LABEL: spec.platform}
                },
                "policyTypes": ["Ingress", "Egress"],
                "ingress": (
                    [{"from": ingress_from, "ports": [{"protocol": "TCP", "port": BUILDKIT_PORT}]}]
                    if ingress_from
                    else []
                ),
                "egress": egress,
            },
        }

    def _read_state(self, name: str) -> PodState | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return _pod_state(self._core().read_namespaced_pod(name, self.settings.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete_pod_and_wait(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        core = self._core()
        try:
            core.delete_namespaced_pod(name, self.settings.namespace, grace_period_seconds=2)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_pod(name, self.settings.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(0.2)
        raise TimeoutError(f"pod {name} was not gone after {DELETE_WAIT_SECONDS:.0f} s")

    def _delete_volume_and_wait(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        core, ns = self._core(), self.settings.namespace
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        try:
            core.delete_namespaced_persistent_volume_claim(name, ns)
            while time.monotonic() < deadline:
                core.read_namespaced_persistent_volume_claim(name, ns)
                time.sleep(0.2)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        raise TimeoutError(f"volume {name} was not gone after {DELETE_WAIT_SECONDS:.0f} s")

    def _delete_all(self, selector: str) -> None:
        """Pods, secrets, network policies, volumes and slot claims matching selector; waits until the volumes
        are gone so that a new builder never binds a volume that is being deleted, and frees the slots only
        then, so that no builder is given ids that own files still on a volume."""
        core, networking, ns = self._core(), self._networking(), self.settings.namespace
        selector = f"{SELECTOR},{selector}"
        for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
            self._delete_pod_and_wait(pod.metadata.name)
        core.delete_collection_namespaced_secret(ns, label_selector=selector)
        networking.delete_collection_namespaced_network_policy(ns, label_selector=selector)
        core.delete_collection_namespaced_persistent_volume_claim(ns, label_selector=selector)
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while core.list_namespaced_persistent_volume_claim(ns, label_selector=selector).items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"volumes {selector} were not gone after {DELETE_WAIT_SECONDS:.0f} s")
            time.sleep(0.2)
        core.delete_collection_namespaced_config_map(ns, label_selector=f"{selector},{SLOT_LABEL}")

    # --- mTLS to the pod ---

    def _client_context(self, project_id: str) -> ssl.SSLContext:
        context = self._contexts.get(project_id)
        if context is None:
            links = self.links.ensure()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_verify_locations(self.authority.ensure_project(project_id) / "ca.pem")
            context.load_cert_chain(links / "client.pem", links / "client-key.pem")
            context.set_alpn_protocols(["h2"])  # buildkitd's gRPC server insists on h2
            self._contexts[project_id] = context
        return context

    # --- the pod watch ---

    def _ensure_watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._closing.clear()
            self._watcher = threading.Thread(target=self._watch, name="k8s-builder-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        from kubernetes import watch

        core = self._core()
        while not self._closing.is_set():
            try:
                listed = core.list_namespaced_pod(self.settings.namespace, label_selector=SELECTOR)
                self._pods = {
                    key: _pod_state(pod)
                    for pod in listed.items
                    if (key := _key_of(pod.metadata.labels)) is not None
                }
                stream = watch.Watch().stream(
                    core.list_namespaced_pod,
                    self.settings.namespace,
                    label_selector=SELECTOR,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=30,
                )
                for event in stream:
                    pod = event["object"]
                    key = _key_of(pod.metadata.labels)
                    if key is None:
                        continue
                    if event["type"] == "DELETED":
                        self._pods.pop(key, None)
                    else:
                        self._pods[key] = _pod_state(pod)
                    if self._closing.is_set():
                        break
            except Exception:
                if not self._closing.is_set():
                    log.exception("watching builder pods failed; listing again")
                    time.sleep(1)


def _pod_state(pod: Any) -> PodState:
    status = pod.status
    return PodState(
        phase=(status.phase if status else None) or "Pending",
        ip=status.pod_ip if status else None,
        deleting=pod.metadata.deletion_timestamp is not None,
    )


def _create_if_absent(create: Callable[[], Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise


class PruneDeletedProjects:
    """A supervisor loop: the objects of projects deleted while this server was down (or whose deletion
    failed half-way) go."""

    name = "kubernetes-prune"
    interval = 60.0

    def __init__(self, backend: KubernetesBuildkitd, project_ids: Callable[[], Awaitable[set[str]]]) -> None:
        self.backend = backend
        self.project_ids = project_ids

    async def run_once(self) -> None:
        if pruned := await self.backend.prune(self.project_ids):
            log.info("pruned the builder objects of %d deleted project(s)", pruned)
