"""The ledger: each key's state on a compacted topic, a local store per owned partition, and the
fenced transactional writer per partition.
"""
