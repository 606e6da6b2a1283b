#!/usr/bin/env bash
# Provisions the local stack's servers into a cache outside the repository:
#   - Apache Kafka broker jars, resolved from Maven Central with mvn (kafka/pom.xml);
#   - MinIO server, built from source with `go install` at a pinned commit;
#   - Toxiproxy server (network faults for `genrelay chaos`), built with `go install` likewise.
# A second run finds both in the cache, does no network work and says so.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${GENRELAY_CACHE:-$HOME/.cache/genrelay}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
# MinIO publishes no semver tags; this pseudo-version is the last commit of the community edition.
minio_ref=${GENRELAY_MINIO_REF:-v0.0.0-20260212201848-7aac2a2c5b7c}
# The Go proxy's version list stops at v2.5.0, so `@latest` would be years old: pin exactly.
toxiproxy_ref=${GENRELAY_TOXIPROXY_REF:-v2.12.0}
maven_dependency_plugin=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

log() { printf 'provision: %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { log "missing '$1' on PATH ($2)"; exit 1; }; }

provision_kafka() {
  local dir="$cache/kafka-$kafka_version"
  local stamp="$dir/.ok"
  # The stamp records the POM it was resolved from, so editing the POM re-resolves.
  local want
  want=$(sha256sum "$here/kafka/pom.xml" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    log "kafka $kafka_version: cached in $dir (no network work)"
    return
  fi
  need java "Kafka 4.x needs Java 17+"
  need mvn "used to resolve the Kafka jars from Maven Central"
  log "kafka $kafka_version: resolving jars from Maven Central into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  mvn -B -q -Dstyle.color=never -f "$here/kafka/pom.xml" -Dmaven.repo.local="$cache/m2" \
    "$maven_dependency_plugin:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$dir/libs"
  # Upstream once tried to move StorageTool out of the core jar; fail early if it ever does.
  if ! unzip -l "$dir"/libs/kafka_2.13-"$kafka_version".jar | grep 'kafka/tools/StorageTool.class' >/dev/null; then
    log "kafka $kafka_version: kafka.tools.StorageTool not found in kafka_2.13 jar"
    exit 1
  fi
  printf '%s' "$want" >"$stamp"
  log "kafka $kafka_version: $(ls "$dir/libs" | wc -l) jars"
}

provision_minio() {
  local bin="$cache/bin/minio"
  local stamp="$cache/bin/minio.ref"
  if [[ -x $bin && -f $stamp && $(cat "$stamp") == "$minio_ref" ]]; then
    log "minio $minio_ref: cached at $bin (no network work)"
    return
  fi
  need go "MinIO is built from source with go install"
  log "minio $minio_ref: building with go install (several minutes on a cold cache)"
  mkdir -p "$cache/bin"
  local gomod="$cache/go/mod" gobuild="$cache/go/build"
  local flags="-s -w"
  build() {
    CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-modcacherw GOMODCACHE="$gomod" GOCACHE="$gobuild" \
      GOBIN="$cache/bin" go install -trimpath -ldflags "$1" "github.com/minio/minio@$minio_ref"
  }
  # Go >= 1.23 may refuse an indirect dependency's //go:linkname; the second try lifts that check.
  build "$flags" || build "$flags -checklinkname=0"
  printf '%s' "$minio_ref" >"$stamp"
  # The binary is what we keep; the module and build caches are gigabytes of intermediate files.
  rm -rf "$gomod" "$gobuild"
  log "minio $minio_ref: built $bin"
}

provision_toxiproxy() {
  local bin="$cache/bin/toxiproxy-server"
  local stamp="$cache/bin/toxiproxy-server.ref"
  if [[ -x $bin && -f $stamp && $(cat "$stamp") == "$toxiproxy_ref" ]]; then
    log "toxiproxy $toxiproxy_ref: cached at $bin (no network work)"
    return
  fi
  need go "Toxiproxy is built from source with go install"
  log "toxiproxy $toxiproxy_ref: building with go install"
  # The package is cmd/server, so go install names the binary `server`: build it into a
  # scratch GOBIN and keep it under a name that says what it is.
  local gomod="$cache/go/mod" gobuild="$cache/go/build" gobin="$cache/go/toxiproxy-bin"
  mkdir -p "$cache/bin" "$gobin"
  CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-modcacherw GOMODCACHE="$gomod" GOCACHE="$gobuild" \
    GOBIN="$gobin" go install -trimpath -ldflags "-s -w" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$toxiproxy_ref"
  mv -f "$gobin/server" "$bin"
  printf '%s' "$toxiproxy_ref" >"$stamp"
  rm -rf "$gomod" "$gobuild" "$gobin"
  log "toxiproxy $toxiproxy_ref: built $bin"
}

mkdir -p "$cache"
provision_kafka
provision_minio
provision_toxiproxy
