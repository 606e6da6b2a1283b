"""`genrelay bench`: genrelay's speed, overhead, scale and spend, measured side by side.

Scenarios (one module each): `throughput` (1 and 4: jobs/s, own-hop latencies, CPU and memory
of the relay process), `baselines` with `baseline_worker` (2: naive fal-client consumer and
the transport floor), `scale` and `restore` (3: memory per in-flight job, ledger restore,
1→2→4 replicas), and the spend check over all of them (5). `runner` runs them in order,
`report` prints the table and writes the JSON, `cli` is the command.
"""
