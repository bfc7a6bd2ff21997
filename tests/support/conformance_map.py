"""The failure map: the conformance suite directly against the reference server and
through a real dispatcher (embedded Redis, one dispatcher process, the reference server
added as an agent), every check that passes directly and not through the dispatcher.

    .venv/bin/python -m tests.support.conformance_map --mount /mcp --unprefixed [--legacy-upstream] --json map.json

``--unprefixed`` adds a run through ``tests/support/mcp_shim.py --unprefix`` in front of
``/mcp`` (the agent's own tool names, as the per-agent mount will serve them), to see what
breaks once the names match; ``--legacy-upstream`` registers the reference server behind
``mcp_shim.py --legacy-only``, so the dispatcher talks 2025-11-25 to it.

Not a test: today's ``/mcp`` prefixes tool names (``everything.test_simple_text``), so the
suite cannot pass there by design; this shows what else breaks and why.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis, free_port
from edgefleet.dispatcher.devtools.processes import die_with_parent, stop_all

from tests.support import conformance
from tests.support.conformance import ReferenceServer, Suite
from tests.support.fleet import Fleet

SELECTIONS = conformance.SELECTIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mount", action="append", default=[], help="dispatcher path to test (repeatable; default /mcp)"
    )
    parser.add_argument("--era", action="append", choices=list(SELECTIONS), help="default: both")
    parser.add_argument("--agent", default="everything", help="agent name of the reference server (default everything)")
    parser.add_argument(
        "--unprefixed", action="store_true", help="also run through the unprefixing shim in front of /mcp"
    )
    parser.add_argument(
        "--legacy-upstream", action="store_true", help="register the reference server as a 2025-only server"
    )
    parser.add_argument(
        "--json", help="write {era: {mount: {scenario: {check: {status, message}}}}} here, incl. 'direct'"
    )
    args = parser.parse_args(argv)
    mounts = args.mount or ([] if args.unprefixed else ["/mcp"])
    eras = args.era or list(SELECTIONS)

    suite = Suite(conformance.install_suite())
    required = suite.scored(conformance.MODERN_ERA)
    server = ReferenceServer(conformance.install_reference_server()).start()
    redis = EmbeddedRedis().start()
    fleet = Fleet(redis.url, f"conf-map-{uuid.uuid4().hex[:8]}")
    dump: dict[str, dict[str, object]] = {}
    total = 0
    shims: list[Shim] = []
    try:
        fleet.start_dispatcher()
        upstream = server.url
        if args.legacy_upstream:
            shims.append(Shim(server.url, "--legacy-only"))
            upstream = shims[-1].url
        conformance.add_to_fleet(fleet, upstream, args.agent)
        targets = [(f"through {m}", fleet.url + m) for m in mounts]
        if args.unprefixed:
            shims.append(Shim(fleet.mcp_url, "--unprefix", args.agent))
            targets.append(("through /mcp, names unprefixed by the shim", shims[-1].url))
        for era in eras:
            direct = suite.run(server.url, era, label="direct")
            dump[era] = {"direct": _plain(direct.results)}
            passed, failed = direct.counts()
            print(f"\n## {era}: directly {passed} checks pass, {failed} fail ({direct.seconds:.1f} s)")
            for label, url in targets:
                through = suite.run(url, era, label=label)
                dump[era][label] = _plain(through.results)
                found = conformance.regressions(
                    direct.results, through.results, must_fix=conformance.is_known_reference_gap
                )
                passed, failed = through.counts()
                print(
                    f"\n### {label}: {passed} pass, {failed} fail ({through.seconds:.1f} s); "
                    f"{len(found)} pass directly and not here"
                )
                for line in found:
                    scenario = line.split(" / ", 1)[0]
                    scope = "" if era == conformance.LEGACY_ERA or scenario in required else " [unscored]"
                    print(f"- {line}{scope}")
                total += len(found)
    finally:
        for shim in shims:
            shim.stop()
        fleet.stop()
        redis.stop()
        server.stop()
    print("\n## timings")
    for what, seconds in conformance.TIMINGS.entries:
        print(f"{seconds:7.1f} s  {what}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dump, out, indent=1)
    return 1 if total else 0


class Shim:
    """``tests/support/mcp_shim.py`` as a child process."""

    def __init__(self, upstream: str, *options: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/mcp"
        command = [
            sys.executable,
            "-m",
            "tests.support.mcp_shim",
            "--upstream",
            upstream,
            "--port",
            str(port),
            *options,
        ]
        self.process = subprocess.Popen(command, cwd=conformance.ROOT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mcp_shim {options} did not start")

    def stop(self) -> None:
        stop_all([self.process], timeout=5)


def _plain(results: conformance.Results) -> dict[str, dict[str, dict[str, str]]]:
    return {s: {c: asdict(check) for c, check in checks.items()} for s, checks in results.items()}


if __name__ == "__main__":
    sys.exit(main())
