"""What the operating system says about this process, as the OpenTelemetry process metrics.

    process.cpu.time                     counter, s, by cpu.mode (user, system)   os.times()
    process.memory.usage                 resident set, bytes                      /proc/self/statm
    process.memory.virtual               virtual size, bytes                      /proc/self/statm
    process.thread.count                 OS threads (gRPC's and the SDK's too)    /proc/self/task
    process.unix.file_descriptor.count   open descriptors (sockets included)      /proc/self/fd

Observed instruments, read only when a reader collects (a scrape, an OTLP export): nothing runs on
the request path. Read from /proc rather than through opentelemetry-instrumentation-system-metrics:
that instrumentor is a process-wide singleton bound to one meter provider (two sidecars in one
process, as the tests run them, would clash) and brings psutil, a compiled dependency, for five
numbers the kernel hands out as text. Where /proc is missing (not Linux), the /proc-read metrics
report nothing and the CPU time still does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from sidecar.telemetry.attributes import CPU_MODE

PROC: Final = Path("/proc/self")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
USER: Final = {CPU_MODE: "user"}
SYSTEM: Final = {CPU_MODE: "system"}


def observe_process(meter: Meter, proc: Path = PROC) -> None:
    """Register the process instruments on `meter` (their callbacks read `proc`)."""

    def cpu_time(options: CallbackOptions) -> Iterable[Observation]:
        times = os.times()
        return (Observation(times.user, USER), Observation(times.system, SYSTEM))

    def memory(index: int) -> Iterable[Observation]:
        try:
            pages = int((proc / "statm").read_text().split()[index])
        except (OSError, ValueError, IndexError):
            return ()
        return (Observation(pages * PAGE_SIZE),)

    def entries(name: str) -> Iterable[Observation]:
        try:
            return (Observation(len(os.listdir(proc / name))),)
        except OSError:
            return ()

    meter.create_observable_counter(
        "process.cpu.time",
        callbacks=[cpu_time],
        unit="s",
        description="CPU seconds this process has used, by mode (user, system).",
    )
    meter.create_observable_up_down_counter(
        "process.memory.usage",
        callbacks=[lambda options: memory(1)],
        unit="By",
        description="Resident memory of this process (what a memory limit counts).",
    )
    meter.create_observable_up_down_counter(
        "process.memory.virtual",
        callbacks=[lambda options: memory(0)],
        unit="By",
        description="Virtual memory of this process.",
    )
    meter.create_observable_up_down_counter(
        "process.thread.count",
        callbacks=[lambda options: entries("task")],
        unit="{thread}",
        description="Operating-system threads of this process.",
    )
    meter.create_observable_up_down_counter(
        "process.unix.file_descriptor.count",
        callbacks=[lambda options: entries("fd")],
        unit="{file_descriptor}",
        description="Open file descriptors of this process (sockets included).",
    )
