"""The provider: the Provider protocol, fal's queue API client, error classification, webhook
signatures and the webhook receiver.
"""
