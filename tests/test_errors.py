"""The two error trees: drawn in full, each failure with its reason, importable from anywhere."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar.core
import sidecar.errors as errors
from sidecar.core.model import Reason
from sidecar.core.model.failures import (
    CastError,
    ConnectorNotFoundError,
    ConnectorNotLiveError,
    DeadlineExhaustedError,
    EvaluationFailure,
    MissingSecretError,
    RenderError,
    SecretBindingError,
    SendError,
    TokenError,
)
from sidecar.errors import SidecarError

REPO_ROOT = Path(__file__).resolve().parent.parent


def subclasses(root: type[Exception]) -> list[type[Exception]]:
    """The tree under root, as its own module defines it (other layers may extend it)."""
    found = []
    for cls in root.__subclasses__():
        if cls.__module__ == root.__module__:
            found.extend([cls, *subclasses(cls)])
    return found


@pytest.mark.parametrize("root", [SidecarError, EvaluationFailure])
def test_every_class_of_a_tree_is_drawn_in_the_module_docstring(root: type[Exception]) -> None:
    lines = (errors.__doc__ or "").splitlines()
    drawn = {line.split("── ")[1].split()[0] for line in lines if "── " in line}

    assert any(line.split()[:1] == [root.__name__] for line in lines)
    assert len(subclasses(root)) > 5
    assert [cls.__name__ for cls in subclasses(root) if cls.__name__ not in drawn] == []


FAILURES = [
    (ConnectorNotFoundError("orders"), Reason.CONNECTOR_NOT_FOUND, "no connector with id 'orders'"),
    (ConnectorNotLiveError("connector 'orders' is DISABLED"), Reason.CONNECTOR_NOT_LIVE, None),
    (
        RenderError(Reason.INVALID_VARIABLE, "order", "url path", "is a dot segment"),
        Reason.INVALID_VARIABLE,
        "variable 'order' is a dot segment (needed in url path)",
    ),
    (
        MissingSecretError("store_key", "orders"),
        Reason.SECRET_NOT_FOUND,
        "secret 'store_key' of connector 'orders' is not available",
    ),
    (
        SecretBindingError("secret 'k' may only be sent to a.example"),
        Reason.BLOCKED_DESTINATION,
        None,
    ),
    (DeadlineExhaustedError("no time left"), Reason.TIMEOUT, None),
    (SendError(Reason.DNS_ERROR, "the host could not be resolved"), Reason.DNS_ERROR, None),
    (
        TokenError("the token endpoint https://login.example/token answered 503"),
        Reason.AUTH_TOKEN_ERROR,
        None,
    ),
    (CastError("is not an INTEGER"), Reason.EXTRACTION_FAILED, None),
]


@pytest.mark.parametrize(
    ("failure", "reason", "message"), FAILURES, ids=[type(f[0]).__name__ for f in FAILURES]
)
def test_each_failure_carries_its_reason_and_a_message(
    failure: EvaluationFailure, reason: Reason, message: str | None
) -> None:
    assert isinstance(failure, EvaluationFailure)
    assert not isinstance(failure, SidecarError)
    assert failure.reason is reason
    assert failure.message == str(failure)
    if message is not None:
        assert failure.message == message


def test_every_failure_class_has_a_case() -> None:
    assert {type(case[0]) for case in FAILURES} == set(subclasses(EvaluationFailure))


def test_send_error_counts_attempts_and_says_whether_a_retry_is_safe() -> None:
    assert (SendError(Reason.TIMEOUT, "t").attempts, SendError(Reason.TIMEOUT, "t").retryable) == (
        1,
        False,
    )
    failure = SendError(Reason.CONNECT_ERROR, "refused", attempts=3, retryable=True)
    assert (failure.attempts, failure.retryable) == (3, True)


def core_modules() -> list[str]:
    found = pkgutil.walk_packages(sidecar.core.__path__, prefix="sidecar.core.")
    return ["sidecar.errors", "sidecar.core", *sorted(module.name for module in found)]


def import_each_first(
    names: list[str], package: str, path: Path
) -> subprocess.CompletedProcess[str]:
    """Import each module in a fresh interpreter, forgetting `package` before each one."""
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        f"    for loaded in [m for m in sys.modules if m.split('.')[0] == {package!r}]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "    print(name)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_errors_and_each_core_module_import_first_without_a_cycle() -> None:
    # The model's failures import its outcome, its exchange imports the failures, the rest of
    # the core imports errors.py: importing any of them first must work (a cycle fails on a
    # partially initialised module, which static contracts on packages may not see).
    names = core_modules()

    result = import_each_first(names, "sidecar", REPO_ROOT)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == names
    assert {"sidecar.core.engine", "sidecar.core.model.exchange"} <= set(names)


def test_the_import_probe_sees_a_cycle(tmp_path: Path) -> None:
    # The control: two modules that import a name from each other fail the same probe.
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic.b import B\nA = 1\n")
    (package / "b.py").write_text("from cyclic.a import A\nB = 2\n")

    result = import_each_first(["cyclic.a"], "cyclic", tmp_path)

    assert result.returncode != 0
    assert "partially initialized module" in result.stderr
