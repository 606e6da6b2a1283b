"""Events: completion, progress and dead-letter records, and the recent outcomes the status page
shows.
"""
