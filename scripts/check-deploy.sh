#!/usr/bin/env bash
# Offline checks of everything under deploy/ (a step of `make test`; runs on its own too):
#   - Dockerfiles: hadolint (deploy/docker/.hadolint.yaml: any finding fails); the images'
#     healthcheck script and this script: shellcheck
#   - deploy/docker-compose.yml against the Compose Specification's JSON schema
#   - deploy/railway/*/railway.json against deploy/schemas/railway.schema.json (transcribed
#     from Railway's docs: see deploy/schemas/README.md), itself checked as a JSON schema
#   - deploy/kubernetes: every manifest (and both kustomizations rendered, when kubectl is
#     here) against the Kubernetes API schemas of v1.28 and v1.37, strictly
#   - deploy/prometheus: promtool check config, check rules, and the alerts' unit tests
#   - deploy/grafana/dashboard.json: structure, every query parsed by promtool, every
#     metric it and alerts.yml use defined in the Rust sources under the right job
#   - every environment the compose file, the manifests and the Railway variables give the
#     gateway and the wake service: only variables their --help lists, and --check-config
#     accepts it (the debug binaries, built here unless GATEWAY_BIN/WAKE_BIN name them)
#   - with a Docker daemon (`docker info`), both images are built; without one that is
#     reported as SKIPPED, which is not a pass of the build.
# That the metrics really appear in a running stack's /metrics is sdk-tests'
# deploy-metrics.test.js (the Node step of `make test`).
#
# Tools, installed once under target/deploy-tools/ and reused: the PyPI packages pinned in
# deploy/tools/requirements.txt in a venv (reinstalled when that file changes), and promtool
# from Debian's `prometheus` package (apt-get download, unpacked; nothing is installed
# system-wide). After that first install nothing is downloaded.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="check-deploy"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(repo_root)"
cd "$REPO_ROOT"

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
TOOLS="$TARGET_DIR/deploy-tools"
VENV="$TOOLS/venv"
REQUIREMENTS="deploy/tools/requirements.txt"
PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
K8S_VERSIONS=(1.28.0 1.37.0)
STARTED=$SECONDS
RESULTS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT

# check NAME CMD... — run CMD, print its output only when it fails; stop at the first failure.
check() {
  local name="$1" start=$SECONDS out rc=0
  shift
  out="$("$@" 2>&1)" || rc=$?
  if ((rc != 0)); then
    printf '%s\n' "$out" >&2
    die "FAILED: $name"
  fi
  RESULTS+=("ok       $name ($((SECONDS - start)) s)")
  log "ok: $name"
}

# --- tools ---------------------------------------------------------------------------------

ensure_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing the validators of $REQUIREMENTS into $VENV (once)"
  command -v python3 >/dev/null 2>&1 || apt_install python3
  rm -rf -- "$VENV"
  mkdir -p "$TOOLS"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf -- "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$REQUIREMENTS" >&2
  echo "$want" >"$stamp"
}

# promtool from Debian's prometheus package, unpacked under target/ (the package itself
# would install and start a Prometheus server).
ensure_promtool() {
  [[ -x "$PROMTOOL" ]] && return 0
  log "fetching promtool (Debian package prometheus) into $TOOLS/prometheus (once)"
  local dir="$TOOLS/prometheus" deb
  rm -rf -- "$dir"
  mkdir -p "$dir"
  chmod 755 "$dir"
  if ! (cd "$dir" && apt-get download prometheus >/dev/null 2>&1); then
    local sudo=()
    is_root || sudo=(sudo -n)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    (cd "$dir" && apt-get download prometheus >/dev/null 2>&1) ||
      die "could not download Debian's prometheus package (for promtool)"
  fi
  deb="$(find "$dir" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" ./usr/bin/promtool
  rm -f -- "$deb"
  [[ -x "$PROMTOOL" ]] || die "no promtool in Debian's prometheus package"
}

ensure_binaries() {
  GATEWAY_BIN="${GATEWAY_BIN:-}"
  WAKE_BIN="${WAKE_BIN:-}"
  if [[ -z "$GATEWAY_BIN" || -z "$WAKE_BIN" ]]; then
    log "building the gateway and the wake service (debug) for --help and --check-config"
    cargo build -q -p gateway -p wake-service
    GATEWAY_BIN="$TARGET_DIR/debug/gateway"
    WAKE_BIN="$TARGET_DIR/debug/wake-service"
  fi
  [[ -x "$GATEWAY_BIN" && -x "$WAKE_BIN" ]] || die "no gateway or wake-service binary"
}

ensure_venv
ensure_promtool
ensure_binaries
BIN="$VENV/bin"
PY="$BIN/python"
log "tools: $("$BIN/hadolint" --version), shellcheck $("$BIN/shellcheck" --version | sed -n 's/^version: //p'), check-jsonschema $("$BIN/check-jsonschema" --version | awk '{print $NF}'), kubernetes-validate $("$BIN/kubernetes-validate" --version), $("$PROMTOOL" --version 2>&1 | head -n 1)"

# --- the checks ----------------------------------------------------------------------------

check "Dockerfiles: hadolint" \
  "$BIN/hadolint" --config deploy/docker/.hadolint.yaml \
  deploy/docker/gateway.Dockerfile deploy/docker/wake-service.Dockerfile
check "shell scripts: shellcheck" \
  "$BIN/shellcheck" -x deploy/docker/healthcheck.sh scripts/check-deploy.sh

check "docker-compose.yml: Compose Specification schema" \
  "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml

check "railway.schema.json: a valid JSON schema" \
  "$BIN/check-jsonschema" --check-metaschema deploy/schemas/railway.schema.json
check "railway.json files: Railway config-as-code schema (transcribed)" \
  "$BIN/check-jsonschema" --schemafile deploy/schemas/railway.schema.json \
  deploy/railway/gateway/railway.json deploy/railway/wake-service/railway.json

mapfile -t MANIFESTS < <(find deploy/kubernetes -name '*.yaml' ! -name 'kustomization.yaml' \
  ! -name '*.patch.yaml' | sort)
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes/base >"$WORK/base.yaml"
  kubectl kustomize deploy/kubernetes/local-driver >"$WORK/local-driver.yaml"
  MANIFESTS+=("$WORK/base.yaml" "$WORK/local-driver.yaml")
  RESULTS+=("ok       kustomizations render (kubectl kustomize)")
else
  RESULTS+=("skipped  rendering the kustomizations (no kubectl): the manifests are checked one by one")
fi
check "kustomization.yaml files list every manifest" "$PY" deploy/tools/check_deploy.py kustomize
for version in "${K8S_VERSIONS[@]}"; do
  check "Kubernetes manifests: API schemas v$version (strict)" \
    "$BIN/kubernetes-validate" --strict --quiet -k "$version" "${MANIFESTS[@]}"
done

check "Prometheus configs: promtool check config" \
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml deploy/prometheus/prometheus-kubernetes.yml
check "alerts.yml: promtool check rules" "$PROMTOOL" check rules deploy/prometheus/alerts.yml
check "alerts.yml: promtool test rules (alerts.test.yml)" \
  "$PROMTOOL" test rules deploy/prometheus/alerts.test.yml

check "Grafana provisioning: YAML" "$PY" deploy/tools/check_deploy.py yaml \
  deploy/grafana/provisioning/datasources/prometheus.yml \
  deploy/grafana/provisioning/dashboards/serverless-postgres.yml
check "Grafana dashboard: structure" "$PY" deploy/tools/check_deploy.py dashboard "$WORK/dashboard-rules.yml"
check "Grafana dashboard: every query parses (promtool)" "$PROMTOOL" check rules "$WORK/dashboard-rules.yml"
check "dashboard and alerts: metric names defined in the sources" "$PY" deploy/tools/check_deploy.py metrics

check "environments: names from --help, accepted by --check-config" \
  "$PY" deploy/tools/check_deploy.py env "$GATEWAY_BIN" "$WAKE_BIN"

# --- images --------------------------------------------------------------------------------

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  check "image build: gateway" docker build -q -f deploy/docker/gateway.Dockerfile \
    -t serverless-postgres/gateway:check .
  check "image build: wake-service" docker build -q -f deploy/docker/wake-service.Dockerfile \
    -t serverless-postgres/wake-service:check .
else
  RESULTS+=("SKIPPED  image builds: no Docker daemon here (docker info failed); the images were NOT built")
  warn "SKIPPED the image builds: no Docker daemon (docker info failed). This is not a pass of the build; the Dockerfiles were only linted."
fi

{
  echo
  echo "==== deploy checks ($((SECONDS - STARTED)) s) ===="
  for line in "${RESULTS[@]}"; do echo "  $line"; done
} >&2
