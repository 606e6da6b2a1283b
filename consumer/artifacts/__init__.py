"""Artifacts: find a result's files, name them, download them safely, store them in S3."""
