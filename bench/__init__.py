"""`genrelay bench`: genrelay's speed, overhead, scale and spend, measured side by side.

Scenarios (one module each): `throughput` (1 and 4: jobs/s, own-hop latencies, CPU and memory
of the relay process), `baselines` with `baseline_worker` (2: naive fal-client consumer and
the transport floor), `scale` and `restore` (3: memory per in-flight job, ledger restore,
1→2→4 replicas), the spend check over all of them (5), `fairness` (6), `backlog` (7: keys
queued behind a full endpoint limit) and `realistic` (8: genrelay and the naive consumer
against seconds-long runs, lost webhooks and failures). `runner` runs them in order, `report`
prints the table and writes the JSON, `cli` is the command.
"""
