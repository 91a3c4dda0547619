#!/usr/bin/env bash
# Pins the container images that deploy/ pulls to the digests their tags point at now: each
# NAME:TAG (or NAME:TAG@sha256:OLD) becomes NAME:TAG@sha256:DIGEST, in the compose file, the
# Dockerfiles (FROM), the KubeRay manifests and the cluster launcher config. The tag stays for the
# reader; Docker and Kubernetes pull by the digest and ignore the tag. After changing a tag, run
# it again: it resolves the tag anew and replaces the old digest.
#
# The files carry exact release tags (tests/deploy checks that), but a registry can move a tag;
# a digest cannot move. This script needs the registries, which the machine these files were
# written on could not reach: it has not been run. Run it before production, review `git diff`,
# commit.
#
#   deploy/pin-digests.sh              # every image pulled from a public registry
#   PIN_OWN=1 deploy/pin-digests.sh    # also ghcr.io/cmpnas/* (the cmpnas images), once pushed
#
# Resolves with `crane digest` (go-containerregistry) if installed, else with
# `docker buildx imagetools inspect`. Both report the digest of the tag's manifest list, which
# covers every platform.
set -euo pipefail

cd "$(dirname "$0")/.."

resolve() {
    local ref=$1 digest
    if command -v crane >/dev/null 2>&1; then
        digest=$(crane digest "$ref")
    elif docker buildx version >/dev/null 2>&1; then
        digest=$(docker buildx imagetools inspect "$ref" | awk '$1 == "Digest:" {print $2; exit}')
    else
        echo "pin-digests: needs crane or docker buildx" >&2
        exit 1
    fi
    if [[ ! $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
        echo "pin-digests: $ref resolved to '$digest', not a sha256 digest" >&2
        exit 1
    fi
    printf '%s' "$digest"
}

# Literal text for a sed (basic regular expression, '|' as delimiter) pattern or replacement.
quote_pattern() { printf '%s' "$1" | sed 's/[][\.*^$|/]/\\&/g'; }
quote_replacement() { printf '%s' "$1" | sed 's/[\&|]/\\&/g'; }

# Images built from this repository: cmpnas/mlflow-server is built by compose and never pulled;
# ghcr.io/cmpnas/* exist only once pushed to your registry.
skip() {
    case "$1" in
        cmpnas/*) return 0 ;;
        ghcr.io/cmpnas/*) [ "${PIN_OWN:-0}" != 1 ] ;;
        *) return 1 ;;
    esac
}

# $1 file, $2 line number, $3 reference as written, $4 the reference to resolve (ARGs expanded).
pin() {
    local file=$1 line=$2 written=$3 ref=${4%%@*} digest
    if [[ $ref == *'$'* ]]; then
        echo "pin-digests: $file:$line: cannot expand $written; pin it by hand" >&2
        exit 1
    fi
    skip "$ref" && { echo "skip  $ref ($file)"; return; }
    digest=$(resolve "$ref")
    sed "${line}s|$(quote_pattern "$written")|$(quote_replacement "$ref@$digest")|" "$file" > "$file.pin-tmp"
    cat "$file.pin-tmp" > "$file" && rm -f "$file.pin-tmp"
    echo "pin   $ref@$digest ($file)"
}

# YAML: image:, head_image:, worker_image: (compose, KubeRay, cluster launcher).
while IFS= read -r file; do
    { grep -nE '^[[:space:]]*(-[[:space:]]+)?(image|head_image|worker_image):[[:space:]]*[^[:space:]#]' "$file" || true; } |
    while IFS= read -r hit; do
        line=${hit%%:*}
        value=$(printf '%s' "${hit#*:}" | sed -E 's/^[^:]*:[[:space:]]*//; s/[[:space:]]+#.*$//; s/[[:space:]]+$//; s/^["'\'']//; s/["'\'']$//')
        pin "$file" "$line" "$value" "$value"
    done
done < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)

# Dockerfiles: FROM, with the ARG defaults of the same file expanded (a FROM that uses an ARG is
# written out literally, since a digest belongs to one tag).
while IFS= read -r file; do
    { grep -nE '^FROM[[:space:]]' "$file" || true; } | while IFS= read -r hit; do
        line=${hit%%:*}
        written=$(printf '%s' "${hit#*:}" | awk '{for (i = 2; i <= NF; i++) if ($i !~ /^--/) {print $i; exit}}')
        expanded=$written
        while IFS='=' read -r name default; do
            expanded=${expanded//\$\{$name\}/$default}
        done < <(sed -nE 's/^ARG[[:space:]]+([A-Za-z_][A-Za-z0-9_]*)=([^[:space:]]+).*/\1=\2/p' "$file")
        pin "$file" "$line" "$written" "$expanded"
    done
done < <(find deploy -name 'Dockerfile*' | sort)
