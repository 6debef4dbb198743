#!/usr/bin/env bash
# Offline checks of the Helm chart in deploy/helm/payment-service (`make helm-check`, CI).
# No cluster, no network after the first helm build:
#
#   1. helm, pinned, built from source with the machine's Go into .stack/bin/ (git-ignored)
#      and reused while its module version is the pinned one: v4.3.2, or v3.21.4 when v4
#      does not build with the Go at hand. The first build downloads and compiles helm's
#      modules: 3m51s on a 2-core machine with empty Go caches, 26 s with warm ones.
#   2. helm lint --strict with the default values and with values-production.yaml
#      (values.schema.json is applied by both lint and template);
#   3. helm template for both, and every rendered object validated against the Kubernetes
#      OpenAPI schemas of the chart's oldest and newest supported versions with
#      kubernetes-validate --strict (an unknown field is an error);
#   4. scripts/check_chart.py: the policy a reviewer would otherwise check by eye;
#   5. the chart's own guards refuse what they must: a secret in env, the PgBouncer URL
#      for the migrations, more dispatchers than partitions.
#
# Rendered manifests are kept in a temporary folder when a check fails (its path is printed).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
UV=${UV:-uv} # may be "python3 -m uv": expanded unquoted below
CHART=deploy/helm/payment-service
BIN_DIR=$REPO/.stack/bin
HELM=$BIN_DIR/helm
# Preferred first; a cached binary of either is reused.
HELM_PINS=("helm.sh/helm/v4/cmd/helm@v4.3.2" "helm.sh/helm/v3/cmd/helm@v3.21.4")
# The chart's kubeVersion floor (preStop sleep action) and the newest schema bundled with
# kubernetes-validate (uv.lock).
KUBE_VERSIONS=(1.30.0 1.37.0)

log() { echo "[helm-check] $*"; }

# "helm.sh/helm/v4/cmd/helm@v4.3.2" of a Go-built binary, from its embedded build info.
built_from() {
    go version -m "$1" 2>/dev/null | awk '$1 == "path" {path = $2} $1 == "mod" {print path "@" $3; exit}'
}

ensure_helm() {
    command -v go >/dev/null || { echo "helm-check needs Go (go install builds the pinned helm)" >&2; exit 2; }
    if [[ -x $HELM ]]; then
        local have
        have=$(built_from "$HELM")
        for pin in "${HELM_PINS[@]}"; do
            if [[ $have == "$pin" ]]; then
                log "helm: $have (cached in .stack/bin)"
                return
            fi
        done
        log "helm in .stack/bin is ${have:-not Go-built}: rebuilding the pinned one"
    fi
    mkdir -p "$BIN_DIR"
    for pin in "${HELM_PINS[@]}"; do
        log "go install $pin (first build: a few minutes)"
        local started=$SECONDS
        if GOBIN=$BIN_DIR go install "$pin"; then
            log "helm: $pin built in $((SECONDS - started)) s"
            return
        fi
        log "go install $pin failed"
    done
    echo "helm-check: no pinned helm could be built" >&2
    exit 1
}

# Expect `helm template` with these extra arguments to fail with this message.
expect_refused() {
    local why=$1 expected=$2
    shift 2
    local out
    if out=$("$HELM" template guard "$CHART" "$@" 2>&1); then
        echo "helm-check: the chart accepted $why" >&2
        return 1
    fi
    if ! grep -q -- "$expected" <<<"$out"; then
        echo "helm-check: $why was refused, but not for the expected reason:" >&2
        echo "$out" >&2
        return 1
    fi
    log "refused: $why"
}

ensure_helm
out=$(mktemp -d)
trap 'status=$?; if ((status == 0)); then rm -rf "$out"; else echo "rendered manifests kept in $out" >&2; fi' EXIT

declare -A values=([default]="" [production]="$CHART/values-production.yaml")
for name in default production; do
    args=(--kube-version "${KUBE_VERSIONS[0]}")
    [[ -n ${values[$name]} ]] && args+=(-f "${values[$name]}")
    "$HELM" lint --strict "$CHART" "${args[@]}" >"$out/lint-$name.txt" || { cat "$out/lint-$name.txt" >&2; exit 1; }
    log "lint --strict ($name values): ok"
    "$HELM" template payments "$CHART" --namespace payments "${args[@]}" >"$out/$name.yaml"
    for version in "${KUBE_VERSIONS[@]}"; do
        $UV run --frozen kubernetes-validate --strict --quiet -k "$version" "$out/$name.yaml"
    done
    log "$(grep -c '^kind:' "$out/$name.yaml") objects ($name values) valid for Kubernetes ${KUBE_VERSIONS[*]} (strict)"
done

$UV run --frozen python scripts/check_chart.py "$out/default.yaml" "$out/production.yaml"

expect_refused "a secret in env" "invalid propertyName 'API_KEY_PEPPER'" --set env.API_KEY_PEPPER=x
expect_refused "the PgBouncer URL for the migrations" "/migrations/databaseUrlSecret/key" \
    --set migrations.databaseUrlSecret.key=database-url
expect_refused "the app's own role for the migrations" "migrations run as the schema owner" \
    --set migrations.databaseUrlSecret.name=payment-service
expect_refused "more dispatchers than partitions" "is above kafka.partitions" \
    --set webhooks.autoscaling.enabled=true --set webhooks.autoscaling.maxReplicas=4 --set kafka.partitions=3
expect_refused "a statement cache behind transaction pooling" "needs DB_STATEMENT_CACHE_SIZE=0" \
    --set pgbouncer.transactionPooling=true --set env.DB_STATEMENT_CACHE_SIZE=100
log "chart ok"
