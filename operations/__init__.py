"""Operator tools that read genrelay's and the provider's records: inspect a key, audit spend."""
