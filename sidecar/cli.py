"""The `rules-sidecar` command: `serve` runs the sidecar, `validate` checks a connectors file.

`validate` reads the same settings as `serve` (environment and `--config`), so a file it accepts
is one the sidecar loads: `secret_hosts` included.

Configuration errors (a bad connectors file, a corrupt store, a port in use) end the process with
exit code 2 and a message that says what to fix, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError, SidecarError
from sidecar.registry import load_connectors_file
from sidecar.server import serve
from sidecar.settings import Settings
from sidecar.telemetry.logs import configure_logging

EXIT_INVALID = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    result: int = arguments.command(arguments)
    return result


def _run(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run the sidecar on the chosen event loop: uvloop by default, as it measured faster with
    grpc.aio and aiohttp (bench/run.py); `event_loop: asyncio` for the standard library's."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop  # only when chosen

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _serve(arguments: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "listen_address": arguments.listen,
            "unix_socket": arguments.unix_socket,
            "data_dir": arguments.data_dir,
            "connectors_file": arguments.connectors_file,
            "secrets_dir": arguments.secrets_dir,
            "log_level": arguments.log_level,
            "log_format": arguments.log_format,
        }.items()
        if value is not None
    }
    try:
        settings = Settings.load(config_file=arguments.config, overrides=overrides)
        configure_logging(settings.log_level, settings.log_format)
        return _run(serve(settings), settings.event_loop)
    except SidecarError as error:
        _report(error)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


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
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "serve",
        help="run the sidecar",
        description="Run the sidecar. Every option can also be set with an environment variable "
        "RULES_SIDECAR_<OPTION> (e.g. RULES_SIDECAR_LISTEN_ADDRESS) or in a YAML config file; "
        "flags win over the environment, which wins over the file.",
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
    return parser


if __name__ == "__main__":
    sys.exit(main())
