"""The `rules-sidecar` command: `serve` runs the sidecar, `validate` checks a connectors file,
`settings` prints every setting with its default, and `--version` the installed version.

`validate` reads the same settings as `serve` (environment and `--config`), so a file it accepts
is one the sidecar loads: `secret_hosts` included.

Configuration errors (a bad connectors file, a corrupt store, a port in use) end the process with
exit code 2 and a message that says what to fix, never a traceback.

On SIGTERM (or SIGINT) `serve` drains and exits within `shutdown_grace_seconds` whatever runs:
exit code 0 when everything stopped in time, 3 (EXIT_ABANDONED) when the grace ran out first and
something was abandoned (the log names it: a telemetry flush, the store's close, a worker thread
stuck in a C call, which Python cannot stop). As a last resort, if even that cannot run (a C call
holding the interpreter's lock), the kernel ends the process a second later with SIGALRM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError, SidecarError
from sidecar.registry import load_connectors_file
from sidecar.server import EXIT_ABANDONED, serve
from sidecar.settings import CONFIG_FILE_VARIABLE, Settings, settings_reference
from sidecar.telemetry.config import sidecar_version
from sidecar.telemetry.logs import configure_logging

EXIT_INVALID = 1
EXIT_CONFIG = 2
# After the deadline of a stop, how long the watchdog thread may wait for the interpreter's lock
# before the kernel ends the process (SIGALRM).
ALARM_AFTER_DEADLINE_SECONDS = 1.0

# `serve`'s flags, by the setting each overrides (`settings` lists them beside the variables).
FLAG_BY_SETTING = {
    "listen_address": "--listen",
    "unix_socket": "--unix-socket",
    "data_dir": "--data-dir",
    "connectors_file": "--connectors-file",
    "secrets_dir": "--secrets-dir",
    "log_level": "--log-level",
    "log_format": "--log-format",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    result: int = arguments.command(arguments)
    return result


def _run(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run the sidecar on the chosen event loop: uvloop by default, as it measured faster with
    grpc.aio and the egress (bench/run.py); `event_loop: asyncio` for the standard library's."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        try:
            import uvloop  # only when chosen
        except ImportError:  # an environment installed without it: slower, still correct
            logging.getLogger("sidecar.cli").warning(
                "event_loop is uvloop, but uvloop is not installed: serving on asyncio's loop"
            )
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _serve(arguments: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        name: value
        for name, flag in FLAG_BY_SETTING.items()
        if (value := getattr(arguments, flag.removeprefix("--").replace("-", "_"))) is not None
    }
    try:
        settings = Settings.load(config_file=arguments.config, overrides=overrides)
        configure_logging(settings.log_level, settings.log_format)
        return _run(serve(settings, exit_by=_exit_by), settings.event_loop)
    except SidecarError as error:
        _report(error)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


def _exit_by(seconds: float) -> None:
    """End the process `seconds` from now if it is still running then (a stop's deadline).

    A worker thread stuck in a C call cannot be stopped, and both asyncio (its executor) and the
    interpreter (at exit) wait for their worker threads: a daemon timer ends the process instead,
    naming the threads it leaves behind. Should a C call hold the interpreter's lock so long that
    the timer cannot run, the kernel's SIGALRM ends the process a second later.
    """

    def end() -> None:
        left = sorted(
            thread.name
            for thread in threading.enumerate()
            if not thread.daemon and thread is not threading.main_thread()
        )
        logging.getLogger("sidecar.cli").warning(
            "shutdown: the process did not exit within its grace; exiting with code %d, "
            "abandoning %d thread(s) still running: %s",
            EXIT_ABANDONED,
            len(left),
            ", ".join(left) or "none (the main thread)",
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_ABANDONED)

    timer = threading.Timer(seconds, end)
    timer.name, timer.daemon = "exit-by-deadline", True
    timer.start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, seconds + ALARM_AFTER_DEADLINE_SECONDS)


def _validate(arguments: argparse.Namespace) -> int:
    try:
        settings = Settings.load(config_file=arguments.config)
    except SidecarError as error:
        _report(error)
        return EXIT_CONFIG
    try:
        bindings = SecretBindings(
            settings.secret_hosts, allow_unbound=settings.allow_unbound_secrets
        )
        connectors = load_connectors_file(arguments.file, bindings=bindings)
    except ConfigError as error:
        _report(error)
        return EXIT_INVALID
    print(f"{arguments.file}: OK, {len(connectors)} connector(s)")
    return 0


def _settings(arguments: argparse.Namespace) -> int:
    """Print every setting: name, type, default, environment variable, flag, description."""
    lines = [
        textwrap.fill(
            f"Settings of rules-sidecar {sidecar_version()}. Sources, strongest first: serve's "
            "flags, the environment (lists and mappings as JSON), the YAML config file (--config "
            f"or {CONFIG_FILE_VARIABLE}), then these defaults.",
            100,
        ),
        "",
    ]
    for setting in settings_reference():
        default = "unset by default" if setting.default is None else f"default {setting.default}"
        flag = FLAG_BY_SETTING.get(setting.name)
        lines += [
            f"{setting.name}  ({setting.kind}; {default})",
            f"    env: {setting.variable}" + (f"   flag: serve {flag}" if flag else ""),
            textwrap.fill(
                setting.description, 100, initial_indent="    ", subsequent_indent="    "
            ),
            "",
        ]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `rules-sidecar settings | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _report(error: SidecarError) -> None:
    print(f"rules-sidecar: error: {error.message}", file=sys.stderr)
    for problem in getattr(error, "problems", ()):
        print(f"  {problem}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rules-sidecar",
        description="A gRPC sidecar that calls business APIs mid-conversation and decides which "
        "workflow branch fires.",
    )
    parser.add_argument("--version", action="version", version=f"rules-sidecar {sidecar_version()}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "serve",
        help="run the sidecar",
        description="Run the sidecar. Every option can also be set with an environment variable "
        "RULES_SIDECAR_<OPTION> (e.g. RULES_SIDECAR_LISTEN_ADDRESS) or in a YAML config file; "
        "flags win over the environment, which wins over the file.",
        epilog=f"These flags are {len(FLAG_BY_SETTING)} of the {len(Settings.model_fields)} "
        "settings. `rules-sidecar settings` prints every one with its default, environment "
        "variable and description.",
    )
    run.add_argument("--config", type=Path, help="YAML config file (RULES_SIDECAR_CONFIG_FILE)")
    run.add_argument("--listen", metavar="HOST:PORT", help="TCP address (default 127.0.0.1:50051)")
    run.add_argument("--unix-socket", type=Path, metavar="PATH", help="also listen on this socket")
    run.add_argument("--data-dir", type=Path, help="store directory (default .rules-sidecar)")
    run.add_argument(
        "--connectors-file", type=Path, help="YAML/JSON connectors file (read-only connectors)"
    )
    run.add_argument("--secrets-dir", type=Path, help="directory with one file per secret")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    run.add_argument("--log-format", help="json (default: one JSON object per line) or text")
    run.set_defaults(command=_serve)

    check = commands.add_parser(
        "validate",
        help="check a connectors file",
        description="Check a connectors file against the settings `serve` would use (secret_hosts "
        "included) and report every error with its location (file:line: field: problem). Exit "
        "code 0 when valid, 1 when not, 2 when the settings are invalid.",
    )
    check.add_argument("file", type=Path, help="the YAML or JSON connectors file")
    check.add_argument("--config", type=Path, help="YAML config file (RULES_SIDECAR_CONFIG_FILE)")
    check.set_defaults(command=_validate)

    reference = commands.add_parser(
        "settings",
        help="print every setting with its default",
        description="Print every setting of `serve`: its type, default, environment variable, "
        "flag (if any) and description.",
    )
    reference.set_defaults(command=_settings)
    return parser


if __name__ == "__main__":
    sys.exit(main())
