#!/usr/bin/env bash
# Builds opendepot's own images with opendepot (the official `depot build` through a running `opendepot serve`)
# and pushes them into that server's registry (README: Kubernetes, "The opendepot image"):
#   opendepot  <registry>/<project>/opendepot:<version>   deploy/image/Dockerfile FROM the project's Debian
#              base (`opendepot images seed`, made from Debian's packages, seeded first if missing), Debian's
#              python3 and docker-registry, opendepot from a wheel of this tree, its dependencies from PyPI,
#              buildctl of this host
#   buildkitd  <registry>/<project>/buildkitd:<buildkit>  stock buildkitd for the builder pods
#              (scripts/k8s/image-roots.sh: FROM scratch, binaries of this host)
#
#   DEPOT_API_URL=… DEPOT_TOKEN=… build.sh opendepot|buildkitd|all --project ID --registry HOST[:PORT] [--insecure]
# The last lines on stdout are the pushed references; everything else goes to stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
BUILDKIT_VERSION=${BUILDKIT_VERSION:-v0.34.2}
SUITE=bookworm
CACHE=${OPENDEPOT_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opendepot/image}
DEPOT=${DEPOT_CLI:-$ROOT/tests/e2e/node/node_modules/@depot/cli-linux-x64/bin/depot}
[ -x "$DEPOT" ] || DEPOT=$(command -v depot) || { echo "no depot CLI (./dev setup installs one)" >&2; exit 1; }

usage() { echo "usage: DEPOT_API_URL=… DEPOT_TOKEN=… $0 opendepot|buildkitd|all --project ID --registry HOST[:PORT] [--insecure]" >&2; exit 2; }
which=${1:-}; shift || true
project="" registry="" insecure=()
while [ $# -gt 0 ]; do
  case "$1" in
    --project) project=$2; shift 2 ;;
    --registry) registry=$2; shift 2 ;;
    --insecure) insecure=(--insecure); shift ;;
    *) usage ;;
  esac
done
case "$which" in opendepot|buildkitd|all) ;; *) usage ;; esac
[ -n "$project" ] && [ -n "$registry" ] && [ -n "${DEPOT_TOKEN:-}" ] && [ -n "${DEPOT_API_URL:-}" ] || usage
say() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The builder pushes with these credentials (the registry takes the opendepot token as the password).
mkdir -p "$work/docker"
printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$registry" "$(printf 'x-token:%s' "$DEPOT_TOKEN" | base64 -w0)" \
  >"$work/docker/config.json"
export DOCKER_CONFIG=$work/docker DEPOT_NO_UPDATE_NOTIFIER=1 DEPOT_ERROR_TELEMETRY=0 DEPOT_NO_SUMMARY_LINK=1

push() { # REFERENCE CONTEXT [depot build options…]
  local reference=$1 context=$2; shift 2
  say "depot build --push -t $reference"
  "$DEPOT" build --project "$project" --platform linux/amd64 --progress plain --push -t "$reference" "$@" \
    "$context" >&2
  pushed+=("$reference")
}

debian_base() {
  # <registry>/<project>/debian:bookworm-slim, seeded from a Debian root filesystem made once per suite
  # (mmdebstrap, from Debian's packages) and cached.
  local base=$registry/$project/debian:$SUITE-slim rootfs=$CACHE/debian-$SUITE.tar
  # Seeded once per project: a new seed is a new base digest, which would rebuild every layer.
  local tls=(--tls-verify=true)
  [ ${#insecure[@]} -eq 0 ] || tls=(--tls-verify=false)
  if skopeo inspect "${tls[@]}" --creds "x-token:$DEPOT_TOKEN" "docker://$base" >/dev/null 2>&1; then
    echo "$base"; return 0
  fi
  if [ ! -f "$rootfs" ]; then
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
    say "making a Debian $SUITE root filesystem with mmdebstrap (once, cached in $CACHE)"
    mkdir -p "$CACHE"
    "$VENV_BIN/python" -c 'import sys; from opendepot.registry.seed import DEFAULT_MIRROR, debian_rootfs
from pathlib import Path; debian_rootfs(sys.argv[1], DEFAULT_MIRROR, Path(sys.argv[2]))' "$SUITE" "$rootfs.partial"
    mv "$rootfs.partial" "$rootfs"
  fi
  say "seeding $base"
  "$VENV_BIN/opendepot" images seed "$project" --registry "$registry" "${insecure[@]}" --rootfs "$rootfs" \
    --suite "$SUITE" >&2
  echo "$base"
}

pushed=()
if [ "$which" = opendepot ] || [ "$which" = all ]; then
  version=$("$VENV_BIN/python" -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')
  base=$(debian_base)
  say "building the opendepot $version wheel"
  "$VENV_BIN/python" -m pip wheel -q --no-deps --disable-pip-version-check -w "$work/context" "$ROOT" >&2
  cp "$ROOT/deploy/image/Dockerfile" "$work/context/Dockerfile"
  cp "$VENV_BIN/buildctl" "$work/context/buildctl"  # static (CGO_ENABLED=0), built by ./dev setup
  # The CA bundle this host's pip trusts (a TLS-inspecting proxy's), for pip inside the build: a secret.
  local_ca=${PIP_CERT:-$("$VENV_BIN/python" -m pip config get global.cert 2>/dev/null || true)}
  secret=()
  [ -n "$local_ca" ] && [ -f "$local_ca" ] && secret=(--secret "id=pip-ca,src=$local_ca")
  push "$registry/$project/opendepot:$version" "$work/context" --build-arg "BASE=$base" "${secret[@]}"
fi
if [ "$which" = buildkitd ] || [ "$which" = all ]; then
  "$ROOT/scripts/k8s/image-roots.sh" "$work/roots" "$VENV_BIN" >&2
  push "$registry/$project/buildkitd:$BUILDKIT_VERSION" "$work/roots/buildkitd"
fi
printf '%s\n' "${pushed[@]}"
