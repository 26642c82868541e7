#!/usr/bin/env bash
# Builds Helm (the chart in deploy/helm/opendepot is linted, rendered and installed with it) from the Go module
# proxy into DEST once per version: DEST/.complete marks a finished build.
#   build-helm.sh VERSION DEST        e.g. build-helm.sh v3.22.0 ~/.cache/opendepot/helm/helm-v3.22.0
set -euo pipefail
version=$1 dest=$2
[ -f "$dest/.complete" ] && exit 0
mkdir -p "$dest"
# helm's go.mod has no replace directives, so `go install module@version` builds it as published.
# Five other people share these cores: lowest priority.
CGO_ENABLED=0 GOBIN="$dest" nice -n 19 go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" "helm.sh/helm/v3/cmd/helm@$version"
touch "$dest/.complete"
