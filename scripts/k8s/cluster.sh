#!/usr/bin/env bash
# A one-node Kubernetes for opendepot's Kubernetes builder backend, built from the Go module proxy and Debian
# packages only (no image registry): etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a real
# kubelet on Debian's containerd 1.6 + runc, a bridge CNI, and the images it runs built here.
#
#   cluster.sh up     build once (cached by version), start, wait for a Ready node; last line: the kubeconfig
#   cluster.sh down   stop everything by PID, unmount, remove the bridge, nftables table, cgroups; restore sysctls
#   cluster.sh down --purge   also delete the cluster's state (etcd, containerd, volumes)
#   cluster.sh kubectl ARGS   the built kubectl, on this cluster
#   cluster.sh firewall       re-apply the nftables tables and the pod-address sync on a running cluster
#
# State lives in $OPENDEPOT_K8S_DIR (default: <repo>/.k8s); the built binaries and images in
# $OPENDEPOT_K8S_CACHE (default: ~/.cache/opendepot/k8s), keyed by version, so that re-runs skip the build.
# Everything log-like goes to stderr; stdout carries only the kubeconfig path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K8S_VERSION=${K8S_VERSION:-v1.34.4}
BUILDKIT_VERSION=${BUILDKIT_VERSION:-v0.34.2}
STATE=${OPENDEPOT_K8S_DIR:-$ROOT/.k8s}
CACHE=${OPENDEPOT_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opendepot/k8s}
K8S_BIN=$CACHE/kubernetes-$K8S_VERSION
# Bump IMAGES_REVISION when image-roots.sh changes what goes into the images.
IMAGES_REVISION=3
IMAGES=$CACHE/images-$BUILDKIT_VERSION-r$IMAGES_REVISION
BUILDKIT_BIN=${BUILDKIT_BIN:-$ROOT/.venv/bin}
# Our own names, ports and addresses, so that nothing collides with other servers on the machine.
NODE=opendepot-node
BRIDGE=odk8s0
POD_SUBNET=10.213.0.0/24
HOST_IP=10.213.0.1
CGROUP_ROOT=opendepot-k8s
NFT_TABLE=opendepot_k8s
ETCD_PORT=12379
APISERVER_PORT=16443
KUBELET_PORT=11250
# TCP ports of this host that builder pods may reach (the registry they push to); everything else on the
# host, and every other pod, is closed to them.
ALLOW_HOST_PORTS=${OPENDEPOT_K8S_ALLOW_HOST_PORTS:-}

PKI=$STATE/pki ETC=$STATE/etc VAR=$STATE/var RUN=$STATE/run LOGS=$STATE/logs
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
KUBECONFIG=$ETC/admin.kubeconfig
export KUBECONFIG PATH=$K8S_BIN:$PATH

say() { printf '[k8s %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

daemon() { # NAME COMMAND...: start in its own session, remember the PID
  local name=$1; shift
  local pidfile=$RUN/pids/$name.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

wait_until() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then say "timed out waiting for $what (logs in $LOGS)"; return 1; fi
    sleep 0.5
  done
}

unmount_under() { # DIR: every mount below it, deepest first
  local mountpoint
  awk -v prefix="$1/" 'index($2, prefix) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r mountpoint; do umount -l "$mountpoint" || true; done
}

build_kubernetes() {
  [ -f "$K8S_BIN/.complete" ] && return 0
  say "building Kubernetes $K8S_VERSION from the Go module proxy (minutes, once per version)"
  "$ROOT/scripts/k8s/build-kubernetes.sh" "$K8S_VERSION" "$K8S_BIN"
}

build_images() {
  # pause (the pod sandbox), busybox, and stock buildkitd: each a folder made here, turned into an OCI
  # tarball by a throw-away host buildkitd, imported into containerd later. Nothing is pulled.
  [ -f "$IMAGES/.complete" ] && return 0
  [ -x "$BUILDKIT_BIN/buildkitd" ] || { say "no $BUILDKIT_BIN/buildkitd: run ./dev setup first"; return 1; }
  say "building the pause, busybox and buildkitd $BUILDKIT_VERSION images"
  local work; work=$(mktemp -d)
  mkdir -p "$IMAGES"
  "$ROOT/scripts/k8s/image-roots.sh" "$work" "$BUILDKIT_BIN"
  local socket=$work/buildkitd.sock
  setsid "$BUILDKIT_BIN/buildkitd" --addr "unix://$socket" --root "$work/buildkit-root" \
    --oci-worker=true --containerd-worker=false >"$work/buildkitd.log" 2>&1 </dev/null &
  local builder=$!
  wait_until "the image builder" 60 "$BUILDKIT_BIN/buildctl" --addr "unix://$socket" debug workers
  local image name
  for image in pause=registry.k8s.io/pause:3.6 busybox=opendepot.local/busybox:latest \
               buildkitd="opendepot.local/buildkitd:$BUILDKIT_VERSION"; do
    name=${image#*=} image=${image%%=*}
    "$BUILDKIT_BIN/buildctl" --addr "unix://$socket" build --frontend dockerfile.v0 \
      --local "context=$work/$image" --local "dockerfile=$work/$image" \
      --output "type=oci,name=$name,dest=$IMAGES/$image.oci.tar" 2>>"$work/build.log"
  done
  kill "$builder"; wait "$builder" 2>/dev/null || true
  unmount_under "$work"
  rm -rf "$work"
  touch "$IMAGES/.complete"
}

certificates() {
  [ -f "$PKI/ca.crt" ] && return 0
  mkdir -p "$PKI"
  local days=825
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -subj "/CN=opendepot-k8s-ca" -days $days \
    -out "$PKI/ca.crt" 2>/dev/null
  issue() { # NAME SUBJECT [SUBJECT_ALT_NAMES]
    local ext=$PKI/$1.ext
    if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$ext"
    else printf 'extendedKeyUsage=clientAuth\n' >"$ext"; fi
    openssl req -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days $days \
      -extfile "$ext" -out "$PKI/$1.crt" 2>/dev/null
    rm -f "$PKI/$1.csr" "$ext"
  }
  issue apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  issue admin "/O=system:masters/CN=opendepot-admin"
  issue kubelet "/O=system:nodes/CN=system:node:$NODE"
  issue kubelet-serving "/CN=$NODE" "IP:$HOST_IP,DNS:$NODE"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

configuration() {
  mkdir -p "$ETC/cni" "$VAR/cni-ipam"
  local user
  for user in admin kubelet; do
    cat >"$ETC/$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: opendepot
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $user
  user: {client-certificate: "$PKI/$user.crt", client-key: "$PKI/$user.key"}
contexts:
- name: opendepot
  context: {cluster: opendepot, user: $user}
current-context: opendepot
EOF
  done
  # No gateway, no masquerade: pods get no default route and reach only the host side of the bridge.
  cat >"$ETC/cni/10-opendepot.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "opendepot", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": false,
   "ipam": {"type": "host-local", "dataDir": "$VAR/cni-ipam",
            "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "${HOST_IP%.*}.10", "rangeEnd": "${HOST_IP%.*}.250"}]]}}]}
EOF
  cat >"$ETC/containerd.toml" <<EOF
version = 2
root = "$VAR/containerd"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$VAR/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Without CAP_SYS_RESOURCE here, runc cannot set the negative oom_score_adj of the pause container
  # ("can't get final child's PID from pipe: EOF"); clamp scores to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ETC/cni"
EOF
  cat >"$ETC/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 11248
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failSwapOn: false
failCgroupV1: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 40
# no KUBE-FIREWALL/-CANARY chains in the host's iptables
makeIPTablesUtilChains: false
podLogsDir: $VAR/pod-logs
EOF
}

firewall() {
  # What a NetworkPolicy would say, enforced where this bridge CNI can: pods may not reach each other, nor
  # the host (where other servers listen), except ALLOW_HOST_PORTS; connections the host opens (the
  # gateway's, when it runs on the host) are answered. opendepot running as a pod (deploy/helm/opendepot)
  # is the one exception, as the chart's NetworkPolicy says: pods labelled app.kubernetes.io/name=opendepot
  # (the set gateway_pods, kept by policy_sync) may open buildkitd's port 1234 on builder pods, builder
  # pods may reach their registry port 8081, and they reach the API server (in a real cluster through the
  # `kubernetes` Service; here, with no kube-proxy, at HOST_IP:APISERVER_PORT, DNATed to its loopback
  # listener). Our own tables, deleted on down; re-applied on a running cluster by `cluster.sh firewall`.
  local allow=""
  [ -n "$ALLOW_HOST_PORTS" ] && allow="iifname \"$BRIDGE\" tcp dport { ${ALLOW_HOST_PORTS// /, } } accept"
  nft delete table inet $NFT_TABLE 2>/dev/null || true
  nft delete table bridge $NFT_TABLE 2>/dev/null || true
  # Pod-to-pod packets meet the bridge table always and the inet forward chain too where br_netfilter is on;
  # bridge-layer conntrack is missing on some kernels, so the bridge table is stateless: answers (from port
  # 1234 or 8081, never a bare SYN) pass back; a builder can open no connection to the opendepot pod but 8081.
  # The DNATed API server connections arrive at 127.0.0.1 from the bridge: allowed on this bridge only.
  sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
  nft -f - <<EOF
table inet $NFT_TABLE {
  set gateway_pods { type ipv4_addr; }
  chain prerouting {
    type nat hook prerouting priority -110; policy accept;
    iifname "$BRIDGE" ip saddr @gateway_pods ip daddr $HOST_IP tcp dport $APISERVER_PORT dnat ip to 127.0.0.1:$APISERVER_PORT
  }
  chain input {
    type filter hook input priority -10; policy accept;
    iifname "$BRIDGE" ct state established,related accept
    $allow
    iifname "$BRIDGE" ip saddr @gateway_pods ip daddr 127.0.0.1 tcp dport $APISERVER_PORT accept
    iifname "$BRIDGE" counter drop
  }
  chain forward {
    type filter hook forward priority -10; policy accept;
    # Pod to pod through the bridge, where br_netfilter (bridge-nf-call-iptables) brings bridged packets here.
    iifname "$BRIDGE" oifname "$BRIDGE" ct state established,related accept
    iifname "$BRIDGE" oifname "$BRIDGE" ip saddr @gateway_pods ip daddr $POD_SUBNET tcp dport 1234 accept
    iifname "$BRIDGE" oifname "$BRIDGE" ip daddr @gateway_pods tcp dport 8081 accept
    iifname "$BRIDGE" counter drop
  }
}
table bridge $NFT_TABLE {
  set gateway_pods { type ipv4_addr; }
  chain forward {
    type filter hook forward priority -10; policy accept;
    ip saddr @gateway_pods ip daddr $POD_SUBNET tcp dport 1234 accept
    ip saddr $POD_SUBNET ip daddr @gateway_pods tcp dport 8081 accept
    ip saddr $POD_SUBNET ip daddr @gateway_pods tcp sport 1234 tcp flags & (syn | ack) != syn accept
    ip saddr @gateway_pods ip daddr $POD_SUBNET tcp sport 8081 tcp flags & (syn | ack) != syn accept
    ip saddr $POD_SUBNET ip daddr $POD_SUBNET counter drop
  }
}
EOF
  # A fresh table has empty sets: the sync loop fills them again at its next round.
  rm -f "$RUN/gateway-pods"
}

policy_sync() {
  # Keeps gateway_pods equal to the addresses of the running opendepot pods (what a NetworkPolicy-enforcing
  # CNI does for the chart's podSelector), every second, changing the sets only when the list changes.
  local known="" now element family
  while running kube-apiserver; do
    if now=$(kubectl get pods --all-namespaces -l app.kubernetes.io/name=opendepot \
               --field-selector=status.phase=Running -o jsonpath='{.items[*].status.podIP}' 2>/dev/null); then
      now=$(tr ' ' '\n' <<<"$now" | grep -E '^[0-9.]+$' | sort | tr '\n' ' ' || true)
      if [ "$now" != "$known" ] || [ ! -f "$RUN/gateway-pods" ]; then
        element=${now% }
        {
          for family in inet bridge; do
            echo "flush set $family $NFT_TABLE gateway_pods"
            [ -z "$element" ] || echo "add element $family $NFT_TABLE gateway_pods { ${element// /, } }"
          done
        } | nft -f - && { known=$now; echo "$now" >"$RUN/gateway-pods"; }
      fi
    fi
    sleep 1
  done
}

cluster_up() {
  mkdir -p "$RUN/pids" "$LOGS" "$VAR"
  build_kubernetes
  build_images
  certificates
  configuration
  # The kubelet changes these; down puts the old values back.
  [ -f "$RUN/sysctl.saved" ] || sysctl vm.overcommit_memory kernel.panic kernel.panic_on_oops >"$RUN/sysctl.saved"
  [ -f "$RUN/netns.before" ] || { ip netns list | awk '{print $1}' >"$RUN/netns.before"; }
  daemon etcd etcd --name opendepot --data-dir "$VAR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster opendepot=http://127.0.0.1:12380 --listen-metrics-urls http://127.0.0.1:12381
  wait_until etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  daemon kube-apiserver kube-apiserver --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=$APISERVER_PORT \
    --service-cluster-ip-range=10.96.0.0/24 --allow-privileged=true --authorization-mode=Node,RBAC \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --enable-admission-plugins=NodeRestriction --profiling=false --kubelet-preferred-address-types=InternalIP,Hostname
  wait_until kube-apiserver 180 kubectl get --raw /readyz
  daemon kube-controller-manager kube-controller-manager --kubeconfig="$KUBECONFIG" \
    --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --secure-port=11257 --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=false --enable-hostpath-provisioner=true --pvclaimbinder-sync-period=2s
  daemon kube-scheduler kube-scheduler --kubeconfig="$KUBECONFIG" \
    --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --secure-port=11259 --leader-elect=false
  # The pod bridge exists before the CNI uses it, so that the host has its address on it.
  ip link show $BRIDGE >/dev/null 2>&1 || { ip link add $BRIDGE type bridge && ip addr add $HOST_IP/24 dev $BRIDGE; }
  ip link set $BRIDGE up
  firewall
  mkdir -p "$RUN/containerd"
  daemon containerd containerd --config "$ETC/containerd.toml"
  wait_until containerd 60 ctr --address "$CONTAINERD_SOCK" version
  local image
  for image in pause busybox buildkitd; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$IMAGES/$image.oci.tar" >>"$LOGS/import.log" 2>&1
  done
  # cgroup v1: the kubelet's cgroupRoot must exist in every hierarchy (cpuset needs cpus/mems filled in).
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do [ -f "$hierarchy/cgroup.procs" ] && mkdir -p "$hierarchy$CGROUP_ROOT"; done
  if [ -d /sys/fs/cgroup/cpuset/$CGROUP_ROOT ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus
    cat /sys/fs/cgroup/cpuset/cpuset.mems >/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems
  fi
  daemon kubelet kubelet --config="$ETC/kubelet.yaml" --kubeconfig="$ETC/kubelet.kubeconfig" \
    --root-dir="$VAR/kubelet" --hostname-override=$NODE --node-ip=$HOST_IP --v=1
  wait_until "node $NODE Ready" 300 kubectl wait --for=condition=Ready "node/$NODE" --timeout=2s
  # Dynamic volumes for builder caches: the in-tree hostPath provisioner (it works under /tmp/hostpath_pv).
  kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: opendepot-hostpath}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  daemon policy-sync "$0" policy-sync
  say "node $NODE Ready; pods on $BRIDGE ($POD_SUBNET); StorageClass opendepot-hostpath"
  echo "$KUBECONFIG"
}

stop_daemon() { # NAME
  local pidfile=$RUN/pids/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    say "stopped $1 ($pid)"
  fi
  rm -f "$pidfile"
}

running() { [ -f "$RUN/pids/$1.pid" ] && kill -0 "$(cat "$RUN/pids/$1.pid")" 2>/dev/null; }

cluster_down() {
  # The kubelet tears pods down properly (CNI DEL, unmounts) while it still runs.
  if running kube-apiserver && running kubelet; then
    kubectl delete pods --all --all-namespaces --grace-period=1 --timeout=60s >/dev/null 2>&1 || true
  fi
  stop_daemon kubelet
  if [ -S "$CONTAINERD_SOCK" ]; then
    local ctr_="ctr --address $CONTAINERD_SOCK -n k8s.io" task container
    for task in $($ctr_ tasks ls -q 2>/dev/null); do
      $ctr_ tasks kill -s SIGKILL "$task" 2>/dev/null || true; sleep 0.2; $ctr_ tasks rm -f "$task" >/dev/null 2>&1 || true
    done
    for container in $($ctr_ containers ls -q 2>/dev/null); do $ctr_ containers rm "$container" >/dev/null 2>&1 || true; done
  fi
  stop_daemon containerd
  # Shims of this containerd name its socket on their command line; only those are killed.
  local proc
  for proc in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK "; then
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  stop_daemon policy-sync
  stop_daemon kube-scheduler; stop_daemon kube-controller-manager; stop_daemon kube-apiserver; stop_daemon etcd
  unmount_under "$STATE"
  if [ -f "$RUN/netns.before" ]; then
    local netns
    for netns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-'); do
      grep -qx "$netns" "$RUN/netns.before" || ip netns delete "$netns" || true
    done
    rm -f "$RUN/netns.before"
  fi
  ip link show $BRIDGE >/dev/null 2>&1 && ip link delete $BRIDGE
  nft delete table inet $NFT_TABLE 2>/dev/null || true
  nft delete table bridge $NFT_TABLE 2>/dev/null || true
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/$CGROUP_ROOT; do
    [ -d "$hierarchy" ] && find "$hierarchy" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # Fixed host paths the kubelet, containerd and libcni use: only our links and empty folders go.
  local link
  for link in /var/log/containers/*.log; do
    [ -L "$link" ] && case "$(readlink "$link")" in "$STATE"/*) rm -f "$link" ;; esac
  done
  rmdir /var/log/containers 2>/dev/null || true
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  rmdir /run/containerd/fifo /run/containerd/s /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd \
    2>/dev/null || true
  if [ -f "$RUN/sysctl.saved" ]; then
    local key value
    while IFS=' =' read -r key value; do [ -n "$key" ] && sysctl -qw "$key=$value"; done <"$RUN/sysctl.saved"
    rm -f "$RUN/sysctl.saved"
  fi
  if [ "${1:-}" = --purge ]; then
    rm -rf "$VAR" "$RUN"
    rm -rf /tmp/hostpath_pv/* 2>/dev/null || true
    rmdir /tmp/hostpath_pv 2>/dev/null || true
  fi
  say "down"
}

case "${1:-}" in
  up) cluster_up ;;
  down) shift; cluster_down "$@" ;;
  kubeconfig) echo "$KUBECONFIG" ;;
  kubectl) shift; exec "$K8S_BIN/kubectl" "$@" ;;
  images) build_images ;;
  # Re-applies the nftables tables (and starts the pod-address sync) on a running cluster, no restart.
  firewall) mkdir -p "$RUN/pids" "$LOGS"; firewall; daemon policy-sync "$0" policy-sync; say "firewall applied" ;;
  policy-sync) policy_sync ;;
  *) echo "usage: $0 up | down [--purge] | kubeconfig | kubectl ARGS | firewall" >&2; exit 2 ;;
esac
