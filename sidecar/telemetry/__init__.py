"""Telemetry: OpenTelemetry traces and metrics, redaction and JSON logs.

It observes what the other layers do and never performs any of it.

    config       what to switch on, from the OTEL_* variables and the settings
    instruments  `Telemetry`: tracer, meter, instruments, the hooks the other layers call
    scopes       the context managers around one evaluation and one outbound attempt
    attributes   the names spans, metrics and log lines record under
    process      the process metrics (CPU, memory, threads, descriptors), read from the OS
    redaction    what a URL may show (`url.full`)
    logs         JSON or text log lines, with trace and span ids
"""
