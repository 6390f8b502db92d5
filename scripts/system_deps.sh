#!/usr/bin/env bash
# Debian packages the tests start for real: redis-server (Feast online store), chromium (report checks),
# a Java 17 runtime (Spark in local mode for the feature tables), postgresql (the shared request log's
# server; binaries in /usr/lib/postgresql/N/bin). Then kubectl with kustomize v5 (the manifest tests render
# k8s/ with it): Debian's kubernetes-client is too old, so the official release binary, checked against its
# published SHA-256, goes to /usr/local/bin.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v curl >/dev/null || missing+=(curl ca-certificates)  # fetches kubectl below
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
KUBECTL_VERSION=v1.32.4  # bundles kustomize v5.5
if ! kubectl version --client 2>/dev/null | grep -q "Kustomize Version: v5"; then
  echo "installing kubectl ${KUBECTL_VERSION} into /usr/local/bin"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  arch="$(dpkg --print-architecture)"
  url="https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${arch}/kubectl"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if curl -fsSL --retry 2 --max-time 120 -o "$tmp/kubectl" "$url" \
     && echo "$(curl -fsSL --max-time 30 "$url.sha256")  $tmp/kubectl" | sha256sum --check --quiet; then
    $SUDO install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl
  else
    echo "kubectl: could not fetch ${url} (no route to dl.k8s.io?); the tests that render k8s/ with kubectl skip"
    echo "and say so; install kubectl >= 1.27 (kustomize v5) to run them"
  fi
fi
