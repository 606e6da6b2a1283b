"""Fault runs against a real stack: network faults through Toxiproxy (Kafka, MinIO, the
provider), process faults (kill -9, broker and MinIO restarts) and provider faults (429
storms, cold starts), each checked against genrelay's invariants (`genrelay chaos`)."""
