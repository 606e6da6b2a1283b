#!/usr/bin/env bash
# Runs genrelay on the embedded local stack (Kafka, MinIO, the fal emulator) until Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec "$venv/bin/genrelay" local "$@"
