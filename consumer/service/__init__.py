"""The service: settings, wiring (Relay), the HTTP surface (health, metrics, status page),
telemetry, logs and start checks.
"""
