#!/usr/bin/env bash
# Runs the whole test suite; integration tests start their own Kafka and MinIO.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

# The status page is checked in a real headless browser: Debian's chromium package.
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    echo "test: installing chromium for the status page test" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "test: chromium could not be installed; the browser test will be skipped" >&2
  else
    echo "test: chromium not found (apt-get install chromium); the browser test will be skipped" >&2
  fi
fi

cd "$repo"
exec "$venv/bin/python" -m pytest "$@"
