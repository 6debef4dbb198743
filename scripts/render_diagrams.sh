#!/usr/bin/env bash
# Render the C4 diagrams (docs/architecture/*.puml) to SVG with a pinned PlantUML.
#
#   scripts/render_diagrams.sh            render every source to its SVG, next to it (make diagrams)
#   scripts/render_diagrams.sh --check    render to a temporary folder and compare (make diagrams-check)
#   scripts/render_diagrams.sh --fetch    only fetch and verify the PlantUML jar
#
# PlantUML is net.sourceforge.plantuml:plantuml from Maven Central, fetched once with `mvn`
# into .stack/cache/plantuml/ (git-ignored) and refused unless its SHA-256 is the one
# pinned below. The sources say `!pragma layout smetana` (PlantUML's built-in Java port of
# Graphviz's dot), so no Graphviz is needed; the C4 macros come from the C4-PlantUML copy
# bundled in the jar (`!include <C4/...>`), so rendering needs no network. Needs Java 11+
# and, for the first fetch only, Maven. Debian's `plantuml` package is far too old for
# this C4 library: it is never used.
#
# Upgrading PlantUML: Maven's RELEASE/LATEST resolve to "8059", a 2017 build from before
# the 1.YYYY.N numbering, so pick the highest 1.YYYY.N from
# https://repo1.maven.org/maven2/net/sourceforge/plantuml/plantuml/maven-metadata.xml,
# set PLANTUML_VERSION, run `scripts/render_diagrams.sh --fetch` with PLANTUML_SHA256=any
# to print the new jar's SHA-256 (Maven already checked it against Central's .sha1), pin
# that, then `make diagrams` and commit the re-rendered SVGs.
#
# How --check decides. Every source is rendered afresh, in one run, into a temporary
# folder; a source that fails to render (PlantUML exits non-zero: syntax error, unknown
# macro) fails the check. Then each fresh SVG is compared with the committed one:
#   1. byte-identical: pass. PlantUML's SVG is deterministic for a given jar, source and
#      set of fonts (the same machine renders identical bytes every time);
#   2. otherwise compare what the picture *says*, with the geometry left out: the
#      `<?plantuml VERSION?>` and `<?plantuml-src ...?>` processing instructions (the
#      renderer's version and the compressed source text the SVG was made from) and the
#      text content of the drawing with all whitespace removed. Equal: pass, reported as
#      "equivalent". This is the case on a machine whose fonts differ from the one that
#      rendered the committed SVG: Java's font metrics move every coordinate and may wrap
#      a long label at another word, but cannot change the source or the words;
#   3. anything else fails: the source changed and the SVG was not re-rendered, the SVG
#      was edited by hand, or it was rendered by another PlantUML version.
# A committed SVG without a source, or a source without a committed SVG, fails too.
# tests/unit/test_docs.py also checks, without Java, that each SVG embeds its current source.
set -euo pipefail

PLANTUML_VERSION=${PLANTUML_VERSION:-1.2026.8}
PLANTUML_SHA256=${PLANTUML_SHA256:-0f77e5f769836b3dee340e207fe497c3e4c43e973d559e3c306915da9c32e34c}
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIAGRAMS=${DIAGRAMS_DIR:-$REPO/docs/architecture}
CACHE=${PLANTUML_CACHE:-$REPO/.stack/cache/plantuml}
JAR=$CACHE/plantuml-$PLANTUML_VERSION.jar

log() { printf '[diagrams] %s\n' "$*"; }
die() {
    printf '[diagrams] ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

# ------------------------------------------------------------------------ the jar

verify_jar() {
    local actual
    actual=$(sha256sum "$1" | awk '{print $1}')
    if [[ $actual != "$PLANTUML_SHA256" ]]; then
        printf '[diagrams] %s has SHA-256 %s, pinned %s\n' "$1" "$actual" "$PLANTUML_SHA256" >&2
        return 1
    fi
}

fetch_jar() {
    if [[ -f $JAR ]]; then
        verify_jar "$JAR" || die "the cached jar does not match the pinned SHA-256: delete $JAR and run again"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found: it fetches PlantUML from Maven Central once (apt-get install -y maven)"
    mkdir -p "$CACHE"
    local tmp
    tmp=$(mktemp -d "$CACHE/download.XXXXXX")
    log "fetching net.sourceforge.plantuml:plantuml:$PLANTUML_VERSION from Maven Central ..."
    # A local repository inside the cache: deleting the cache really means a fresh download.
    if ! mvn -B --no-transfer-progress -Dmaven.repo.local="$CACHE/m2" \
        "$DEPENDENCY_PLUGIN:copy" \
        -Dartifact="net.sourceforge.plantuml:plantuml:$PLANTUML_VERSION" \
        -DoutputDirectory="$tmp" >"$CACHE/maven.log" 2>&1; then
        tail -n 30 "$CACHE/maven.log" >&2
        rm -rf "$tmp"
        die "Maven could not fetch PlantUML $PLANTUML_VERSION (full log: $CACHE/maven.log)"
    fi
    if ! verify_jar "$tmp/plantuml-$PLANTUML_VERSION.jar"; then
        rm -rf "$tmp"
        die "the downloaded jar does not match the pinned SHA-256; not using it"
    fi
    mv "$tmp/plantuml-$PLANTUML_VERSION.jar" "$JAR"
    rm -rf "$tmp"
    log "cached $JAR (SHA-256 verified)"
}

# ------------------------------------------------------------------------ rendering

SOURCES=()
find_sources() {
    local f
    for f in "$DIAGRAMS"/*.puml; do
        [[ -e $f ]] && SOURCES+=("$f")
    done
    ((${#SOURCES[@]})) || die "no .puml sources in $DIAGRAMS"
}

# Render every source into $1 in one JVM; fail if any source does not render.
render_into() {
    local out=$1
    command -v java >/dev/null 2>&1 || die "java not found (Java 11+ runs PlantUML; apt-get install -y default-jre-headless)"
    mkdir -p "$out"
    # -failfast2: check the syntax of every source before rendering any.
    if ! java -Djava.awt.headless=true -jar "$JAR" -tsvg -charset UTF-8 -failfast2 \
        -o "$out" "${SOURCES[@]}"; then
        die "PlantUML could not render the diagrams (see its messages above)"
    fi
    local src svg
    for src in "${SOURCES[@]}"; do
        svg=$out/$(basename "${src%.puml}").svg
        [[ -s $svg ]] || die "PlantUML wrote no $(basename "$svg") for $(basename "$src")"
    done
}

# What an SVG says, without its geometry: renderer version, embedded source, and the
# drawing's text with every whitespace character removed.
content_of() {
    grep -o '<?plantuml[^?]*?>' "$1" || true
    sed -e 's/<[^>]*>//g' "$1" | tr -d '[:space:]'
    echo
}

cmd_render() {
    find_sources
    fetch_jar
    local tmp src name changed=0
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $tmp now: it is local
    trap "rm -rf '$tmp'" EXIT
    render_into "$tmp"
    for src in "${SOURCES[@]}"; do
        name=$(basename "${src%.puml}").svg
        if cmp -s "$tmp/$name" "$DIAGRAMS/$name"; then
            log "$name: unchanged"
        else
            cp "$tmp/$name" "$DIAGRAMS/$name"
            log "$name: rendered"
            changed=$((changed + 1))
        fi
    done
    log "PlantUML $PLANTUML_VERSION: ${#SOURCES[@]} diagram(s), $changed updated"
}

cmd_check() {
    find_sources
    fetch_jar
    local tmp src name svg failed=0
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    render_into "$tmp"
    for src in "${SOURCES[@]}"; do
        name=$(basename "${src%.puml}").svg
        if [[ ! -f $DIAGRAMS/$name ]]; then
            log "FAIL $name: not committed (run make diagrams)"
            failed=1
        elif cmp -s "$tmp/$name" "$DIAGRAMS/$name"; then
            log "ok   $name: identical to a fresh render"
        elif [[ $(content_of "$tmp/$name") == "$(content_of "$DIAGRAMS/$name")" ]]; then
            log "ok   $name: equivalent to a fresh render (same source, version and text; layout differs, e.g. fonts)"
        else
            log "FAIL $name: differs from a fresh render of $(basename "$src") (run make diagrams)"
            failed=1
        fi
    done
    for svg in "$DIAGRAMS"/*.svg; do
        [[ -e $svg ]] || continue
        if [[ ! -f ${svg%.svg}.puml ]]; then
            log "FAIL $(basename "$svg"): no source $(basename "${svg%.svg}").puml"
            failed=1
        fi
    done
    ((failed == 0)) || die "the committed diagrams do not match their sources"
    log "all ${#SOURCES[@]} diagram(s) render and match their committed SVGs (PlantUML $PLANTUML_VERSION)"
}

case ${1:-} in
"") cmd_render ;;
--check) cmd_check ;;
--fetch) fetch_jar ;;
*) usage ;;
esac
