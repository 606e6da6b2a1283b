"""Dispatch: one actor per key running the lifecycle, in-flight slots, timers and back-off, and
partition ownership across rebalances.
"""
