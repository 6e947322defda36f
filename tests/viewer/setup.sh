#!/usr/bin/env bash
# Fetch the OHIF Viewer production build and playwright-core into a cache folder
# keyed by their versions, and write OHIF's app-config.js for the viewer test.
#
# Nothing is built: the npm package @ohif/app ships a built dist/, fetched with
# `npm pack` so that none of its build dependencies are installed. Chromium is
# the Debian package (/usr/bin/chromium); playwright-core never downloads one.
#
# Usage: tests/viewer/setup.sh        prints the cache folder on stdout
# Environment:
#   HCLAL_TEST_VIEWER_CACHE   parent folder of the cache (default $HOME/.cache/hclal-viewer)
#
# Exit status 3 means the npm registry could not be reached.
set -euo pipefail

OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.2
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE_ROOT="${HCLAL_TEST_VIEWER_CACHE:-$HOME/.cache/hclal-viewer}"
CACHE="$CACHE_ROOT/ohif-$OHIF_VERSION-playwright-$PLAYWRIGHT_VERSION"
READY="$CACHE/.ready"

log() { echo "setup.sh: $*" >&2; }

if [ -f "$READY" ]; then
  cp "$HERE/app-config.js" "$CACHE/ohif/app-config.js"
  echo "$CACHE"
  exit 0
fi

for tool in node npm; do
  command -v "$tool" >/dev/null || { log "$tool is missing; install the Debian packages nodejs and npm"; exit 2; }
done

if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  log "Node.js $(node --version) is too old; playwright-core $PLAYWRIGHT_VERSION needs Node.js 20 or later"
  exit 2
fi

# One quick retry, so an offline machine learns it in seconds, not minutes.
if ! npm view --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
    "playwright-core@$PLAYWRIGHT_VERSION" version >/dev/null 2>&1; then
  log "the npm registry ($(npm config get registry)) is unreachable; cannot fetch OHIF"
  exit 3
fi

mkdir -p "$CACHE_ROOT"
STAGING="$(mktemp -d "$CACHE_ROOT/.staging.XXXXXX")"
trap 'rm -rf "$STAGING"' EXIT

# OHIF: keep only package/dist from the tarball.
log "fetching @ohif/app@$OHIF_VERSION with npm pack"
(cd "$STAGING" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tar -xzf "$STAGING/ohif-app-$OHIF_VERSION.tgz" -C "$STAGING" package/dist
mv "$STAGING/package/dist" "$STAGING/ohif"
cp "$HERE/app-config.js" "$STAGING/ohif/app-config.js"

# playwright-core, the browser driver only.
log "installing playwright-core@$PLAYWRIGHT_VERSION"
(cd "$STAGING" && npm install --silent --no-save --no-audit --no-fund --no-package-lock \
  "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)

# Swap the finished folder in, so an interrupted run never leaves a half cache.
rm -rf "$CACHE.old"
[ -d "$CACHE" ] && mv "$CACHE" "$CACHE.old"
mkdir -p "$CACHE"
mv "$STAGING/ohif" "$STAGING/node_modules" "$CACHE/"
rm -rf "$CACHE.old"
touch "$READY"
log "cache ready in $CACHE"
echo "$CACHE"
