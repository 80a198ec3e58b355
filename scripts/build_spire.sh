#!/usr/bin/env bash
# Builds spire-server and spire-agent (the release bench/spire/go.mod requires) into a versioned
# cache once, and prints the cache's bin directory. Later runs find the binaries and build nothing.
#
#   scripts/build_spire.sh            # ${HERALD_SPIRE_CACHE:-~/.cache/herald/spire}/v1.13.3/bin
#
# Exit 3: no Go toolchain; exit 1: the build failed (its output is on stderr). The last line of
# standard output is the bin directory. The Go module and build caches stay in their default
# places, so a rebuild on the same machine (another cache directory, a removed binary) is warm.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(awk '$1 == "github.com/spiffe/spire" { print $2 }' "$ROOT/bench/spire/go.mod")"
CACHE="${HERALD_SPIRE_CACHE:-$HOME/.cache/herald/spire}/$VERSION"
BIN="$CACHE/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

built() { [[ -x "$BIN/spire-server" && -x "$BIN/spire-agent" ]]; }

if built; then
    echo "$BIN"
    exit 0
fi
if [[ ! -x "$GO" ]]; then
    echo "build_spire: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)" >&2
    exit 3
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if built; then
    echo "$BIN"  # another run built it while this one waited
    exit 0
fi
# Built beside the cache and moved into place whole: an interrupted build leaves no half a bin/.
STAGE="$(mktemp -d "$CACHE/bin.partial.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
began=$SECONDS
cd "$ROOT/bench/spire"
echo "build_spire: building spire-server and spire-agent $VERSION (about 5 min when cold)" >&2
# SPIRE's SQLite datastore is cgo (go-sqlite3); -p 2 keeps a shared 2-core machine usable.
GOTOOLCHAIN=local CGO_ENABLED=1 "$GO" build -p 2 -trimpath -buildvcs=false -o "$STAGE/" \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2
chmod 755 "$STAGE"
rm -rf "$BIN"
mv "$STAGE" "$BIN"
trap - EXIT
echo "build_spire: spire-server and spire-agent $VERSION built in $((SECONDS - began)) s" >&2
echo "$BIN"
