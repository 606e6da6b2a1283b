#!/usr/bin/env bash
# Runs the whole test suite; integration tests start their own Kafka and MinIO.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$repo"
exec "$venv/bin/python" -m pytest "$@"
