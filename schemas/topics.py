"""Default topic names; each topic is keyed by idempotency key, dead letters by the original key."""

from dataclasses import dataclass

from aiokafka.partitioner import murmur2


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of genrelay's topics; override any of them per deployment."""

    requests: str = "genrelay.requests"
    ledger: str = "genrelay.ledger"
    webhooks: str = "genrelay.webhooks"
    completions: str = "genrelay.completions"
    progress: str = "genrelay.progress"
    dead_letter: str = "genrelay.dead-letter"
    costs: str = "genrelay.costs"
    budgets: str = "genrelay.budgets"
    spend: str = "genrelay.spend"

    def all(self) -> tuple[str, ...]:
        """Every topic name, in the order a request flows through them."""
        return (
            self.requests,
            self.ledger,
            self.webhooks,
            self.completions,
            self.progress,
            self.dead_letter,
            self.costs,
            self.budgets,
            self.spend,
        )


DEFAULT_TOPICS = Topics()


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key`: where producers put a key's
    request, so where genrelay keeps its state and events."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions
