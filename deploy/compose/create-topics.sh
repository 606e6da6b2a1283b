#!/usr/bin/env bash
# Creates genrelay's six topics if they are missing, then checks the ones that exist.
# Shared by the compose one-shot service `kafka-init` and the Kubernetes Job `genrelay-topics`
# (which carries a copy of this text; a test keeps the two identical).
#
# Partitions are fixed at creation. genrelay places each key's state by `hash(key) % partitions`,
# so growing the requests, ledger or webhooks topics later would strand keys' state on the old
# partitions: this script never alters an existing topic, and fails when one of those three
# disagrees with GENRELAY_PARTITIONS or the ledger is not compacted.
#
# Environment (the same names genrelay reads):
#   GENRELAY_KAFKA_BOOTSTRAP      bootstrap servers (required)
#   GENRELAY_PARTITIONS           partitions of every topic (default 6)
#   GENRELAY_REPLICATION_FACTOR   replication factor (default 1; use 3 in production)
#   GENRELAY_TOPIC_*              topic names (defaults below are genrelay's)
#   KAFKA_TOPICS                  the kafka-topics command (default /opt/kafka/bin/kafka-topics.sh)
#   KAFKA_COMMAND_CONFIG          optional client properties file (TLS, SASL)
set -euo pipefail

bootstrap=${GENRELAY_KAFKA_BOOTSTRAP:?GENRELAY_KAFKA_BOOTSTRAP is required}
partitions=${GENRELAY_PARTITIONS:-6}
replication=${GENRELAY_REPLICATION_FACTOR:-1}
kafka_topics=${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}
requests=${GENRELAY_TOPIC_REQUESTS:-genrelay.requests}
ledger=${GENRELAY_TOPIC_LEDGER:-genrelay.ledger}
webhooks=${GENRELAY_TOPIC_WEBHOOKS:-genrelay.webhooks}
completions=${GENRELAY_TOPIC_COMPLETIONS:-genrelay.completions}
progress=${GENRELAY_TOPIC_PROGRESS:-genrelay.progress}
dead_letter=${GENRELAY_TOPIC_DEAD_LETTER:-genrelay.dead-letter}
costs=${GENRELAY_TOPIC_COSTS:-genrelay.costs}
budgets=${GENRELAY_TOPIC_BUDGETS:-genrelay.budgets}
spend=${GENRELAY_TOPIC_SPEND:-genrelay.spend}

client=(--bootstrap-server "$bootstrap")
if [[ -n ${KAFKA_COMMAND_CONFIG:-} ]]; then
  client+=(--command-config "$KAFKA_COMMAND_CONFIG")
fi

topics() {
  "$kafka_topics" "${client[@]}" "$@"
}

echo "create-topics: waiting for Kafka at $bootstrap"
for attempt in $(seq 1 60); do
  if topics --list >/dev/null 2>&1; then
    break
  fi
  if [[ $attempt == 60 ]]; then
    echo "create-topics: Kafka at $bootstrap did not answer" >&2
    exit 1
  fi
  sleep 2
done

create() {
  local name=$1
  shift
  topics --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor "$replication" "$@"
}

create "$requests"
create "$ledger" --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.1
create "$webhooks"
create "$completions"
create "$progress"
create "$dead_letter"
create "$costs" --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.1
create "$budgets" --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.1
create "$spend" --config cleanup.policy=compact --config min.cleanable.dirty.ratio=0.1

# Keys are co-partitioned across these four: each must have exactly GENRELAY_PARTITIONS.
status=0
for name in "$requests" "$ledger" "$webhooks" "$spend"; do
  described=$(topics --describe --topic "$name")
  header=$(grep -m1 'PartitionCount' <<<"$described" || true)
  count=$(sed -n 's/.*PartitionCount: *\([0-9][0-9]*\).*/\1/p' <<<"$header")
  echo "create-topics: $name has ${count:-no} partitions"
  if [[ $count != "$partitions" ]]; then
    echo "create-topics: $name has ${count:-no} partitions but GENRELAY_PARTITIONS is" \
      "$partitions; partitions cannot change once keys are placed (see deploy/README.md)" >&2
    status=1
  fi
  if [[ $name == "$ledger" && $header != *cleanup.policy=compact* ]]; then
    echo "create-topics: $ledger must have cleanup.policy=compact" >&2
    status=1
  fi
done
exit $status
