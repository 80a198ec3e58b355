#!/usr/bin/env bash
# Build the pinned Kubernetes control-plane binaries (etcd, and the tools listed in
# tests/k8s/go/kubernetes/go.mod) from Go modules into a versioned cache, once.
#
#   scripts/k8s_binaries.sh          build if missing or out of date; print the bin directory
#   HERALD_K8S_CACHE=DIR ...         cache root (default ~/.cache/herald/k8s)
#
# The cache key covers the versions, both wrapper modules and the Go version, so a changed pin
# rebuilds and nothing else does. Exit 3: no usable Go; exit 1: the build failed (its output is
# printed). The last line of standard output is the bin directory.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
k8s="$top/tests/k8s"
# shellcheck source=../tests/k8s/versions.env
. "$k8s/versions.env"

say() { echo "k8s_binaries: $*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    say "go is not on PATH; Go >= 1.26 is needed to build the control plane"
    exit 3
fi
go_version=$(go env GOVERSION)
if ! printf '%s\n' "go1.26" "$go_version" | sort -C -V; then
    say "$go_version is too old; Go >= 1.26 is needed to build the control plane"
    exit 3
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

pinned() { (cd "$k8s/go/$1" && go list -m -f '{{.Version}}' "$2"); }
for check in "kubernetes k8s.io/kubernetes $KUBERNETES_VERSION" \
             "etcd go.etcd.io/etcd/server/v3 $ETCD_VERSION"; do
    set -- $check
    found=$(pinned "$1" "$2")
    if [ "$found" != "$3" ]; then
        say "tests/k8s/go/$1/go.mod pins $2 $found but versions.env says $3"
        exit 1
    fi
done

# The tools block of the wrapper module: one main package per line.
mapfile -t tools < <(awk '/^tool \($/ {on=1; next} on && /^\)/ {on=0} on {print $1}' \
    "$k8s/go/kubernetes/go.mod")

cache="${HERALD_K8S_CACHE:-$HOME/.cache/herald/k8s}/$KUBERNETES_VERSION"
bin="$cache/bin"
stamp=$( { cat "$k8s/versions.env" "$k8s"/go/*/go.mod "$k8s"/go/*/go.sum "$k8s/go/etcd/main.go"
           echo "$go_version"; } | sha256sum | cut -d' ' -f1)
if [ -f "$bin/.stamp" ] && [ "$(cat "$bin/.stamp")" = "$stamp" ]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$bin/.stamp" ] && [ "$(cat "$bin/.stamp")" = "$stamp" ]; then
    echo "$bin"  # another run built it while this one waited
    exit 0
fi

staging="$cache/bin.new"
rm -rf "$staging"
mkdir -p "$staging"
log="$cache/build.log"
: >"$log"
started=$SECONDS

build() {  # build <module dir> <ldflags> <package...>
    local dir=$1 ldflags=$2
    shift 2
    (cd "$k8s/go/$dir" && go build -p "$(nproc)" -trimpath -ldflags "$ldflags" -o "$staging/" "$@") \
        >>"$log" 2>&1 || {
        say "build failed in tests/k8s/go/$dir; go said (all of it in $log):"
        grep -v '^go: downloading' "$log" | head -n 80 >&2
        exit 1
    }
}

# Kubernetes' own release build stamps these; without them /version answers v0.0.0-master.
minor=${KUBERNETES_VERSION#v*.}
minor=${minor%%.*}
major=${KUBERNETES_VERSION#v}
major=${major%%.*}
built=$(cd "$k8s/go/kubernetes" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
version_flags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major"
    version_flags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$built"
done

say "building etcd $ETCD_VERSION (module downloads included; first run takes a few minutes)"
build etcd "-s -w" .
say "etcd built ($((SECONDS - started)) s); building ${tools[*]##*/} $KUBERNETES_VERSION"
build kubernetes "$version_flags" "${tools[@]}"
say "all built in $((SECONDS - started)) s"

echo "$stamp" >"$staging/.stamp"
rm -rf "$bin"
mv "$staging" "$bin"
echo "$bin"
