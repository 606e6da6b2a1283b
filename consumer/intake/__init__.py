"""Intake: a request record becomes a lifecycle command or a dead letter; which offsets may
commit.
"""
