#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl of one Kubernetes version
# from the Go module proxy into DEST (once: DEST/.complete marks a finished build).
#   build-kubernetes.sh VERSION DEST
# k8s.io/kubernetes' go.mod replaces its k8s.io/* staging modules with ./staging/src/..., which module zips
# leave out; so the build runs in a wrapper module that pins each of them to its published v0.x release.
set -euo pipefail
version=$1 dest=$2
[ -f "$dest/.complete" ] && exit 0
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
info=$(go mod download -json "k8s.io/kubernetes@$version")
upstream_gomod=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["GoMod"])' <<<"$info")
staging_version=v0.${version#v1.}
# sample-cli-plugin and sample-controller are not needed by k8s.io/kubernetes (the former is not served).
mapfile -t staging < <(grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$upstream_gomod" | awk '{print $1}' |
                       grep -vE 'sample-(cli-plugin|controller)$')
{
  printf 'module opendepot.local/k8sbuild\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\nrequire (\n' "$version"
  for m in "${staging[@]}"; do printf '\t%s %s\n' "$m" "$staging_version"; done
  printf ')\n\nreplace (\n'
  for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
  printf ')\n'
} > go.mod
minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1"
ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version"
packages=()
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do packages+=("k8s.io/kubernetes/cmd/$c"); done
# Five other people share these cores: lowest priority.
GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$dest/" "${packages[@]}"
touch "$dest/.complete"
