"""Profile the sidecar on the benchmark's scenario: py-spy samples the real process under ghz load.

    .venv/bin/python bench/profile.py [--seconds 15] [--py-spy PATH] [--log-level WARNING]
                                      [--native] [--folded stacks.txt]
                                      [--call EvaluateNode|ExtractVariables]

Writes bench/results/profile-<commit>.txt (profile-<commit>-extract.txt for ExtractVariables):
the hottest functions by own time and by total time (from py-spy's collapsed stacks), which is
what each hot-path change in the history was guided by. py-spy is a dev dependency; it needs
permission to ptrace the sidecar (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import tempfile
from pathlib import Path

from common import NODE, ORDER, ROOT, VARIABLES, sidecar, upstream

GHZ = ROOT / ".tools/go/bin/ghz"
# The request of each profiled call: the benchmark's scenario.
CALLS = {
    "EvaluateNode": {"node": NODE, "variables": VARIABLES},
    "ExtractVariables": {"extractions": NODE["extractions"], "json": ORDER},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--py-spy", default=str(ROOT / ".venv/bin/py-spy"))
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--folded", help="also keep py-spy's collapsed stacks at this path")
    parser.add_argument("--call", choices=sorted(CALLS), default="EvaluateNode")
    arguments = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch, upstream() as upstream_port:
        env = {"RULES_SIDECAR_LOG_LEVEL": arguments.log_level}
        with sidecar(upstream_port, env) as stack:
            folded = Path(scratch) / "folded.txt"
            spy = subprocess.Popen(
                [
                    arguments.py_spy,
                    "record",
                    "--pid",
                    str(stack.sidecar.pid),
                    "--duration",
                    str(arguments.seconds),
                    "--format",
                    "raw",
                    "--output",
                    str(folded),
                    # py-spy reads native stacks only from a stopped process.
                    *(["--native"] if arguments.native else ["--nonblocking"]),
                ]
            )
            subprocess.run(
                [
                    str(GHZ),
                    "--insecure",
                    "--import-paths",
                    f"{ROOT / 'proto'},{ROOT / 'proto/third_party/googleapis'}",
                    "--proto",
                    "rulesidecar/v1/rules_sidecar.proto",
                    "--call",
                    f"rulesidecar.v1.RulesSidecarService/{arguments.call}",
                    "--data",
                    json.dumps(CALLS[arguments.call]),
                    "--concurrency",
                    "16",
                    "--duration",
                    f"{arguments.seconds + 2}s",
                    stack.sidecar_address,
                ],
                check=True,
                capture_output=True,
            )
            spy.wait(60)
            report = summarise(folded.read_text(), arguments.top)
            if arguments.folded:
                Path(arguments.folded).write_text(folded.read_text())
    suffix = "" if arguments.call == "EvaluateNode" else "-extract"
    output = ROOT / "bench" / "results" / f"profile-{commit}{suffix}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(report)
    print(f"written to {output}")


def summarise(folded: str, top: int) -> str:
    """Own (innermost) and total samples per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [
            frame.split(" (")[0] + " " + frame.split(" (")[1].split(":")[0]
            if " (" in frame
            else frame
            for frame in stack.split(";")
        ]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples"]
    lines.append(f"\n{'own %':>6}  function (file)")
    lines += [f"{count / samples * 100:6.1f}  {name}" for name, count in own.most_common(top)]
    lines.append(f"\n{'total %':>7}  function (file)")
    lines += [f"{count / samples * 100:7.1f}  {name}" for name, count in total.most_common(top)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
