"""Telemetry: OpenTelemetry traces and metrics, redaction and JSON logs.

It observes what the other layers do and never performs any of it.
"""
