"""The ``edgefleet`` command: a thin layer over the same code the services run.

edgefleet dev                       the whole local fleet, no Docker, no servers
edgefleet serve                     one dispatcher (production entry point)
edgefleet agent NAME                one example agent replica (text, data, trainer)
edgefleet tools                     list the federated tools through /mcp
edgefleet call TOOL k=v ...         call a tool (progress bar for long tools)
edgefleet tasks list|get|watch|cancel  durable MCP tasks (REST /v1/tasks)
edgefleet pipelines list|get|watch|approve|reject|cancel  pipeline runs on Temporal
edgefleet agents list|add|remove    the registry
edgefleet audit tail [-f]           the audit stream: who did what
edgefleet keys create [--agent]     a client API key, or an agent's own key
edgefleet bench                     through the dispatcher vs direct, one run
edgefleet config                    every EDGEFLEET_* setting with its default
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet.shared.errors import ConfigError
from edgefleet.shared.printable import printable

EXAMPLE_AGENTS = ("text", "data", "trainer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="An MCP edge dispatcher: one URL in front of a regional fleet of agents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Start with `edgefleet dev`, then `edgefleet tools` and `edgefleet call text.keywords text="..."`.',
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run a whole local fleet: embedded Redis, dispatcher, example agents in 3 regions")
    dev.add_argument("--port", type=int, default=8700, help="dispatcher port (default 8700)")
    dev.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    dev.add_argument(
        "--agents",
        default="text@eu-west,text@us-east,text@ap-southeast,data@eu-west,data@us-east,trainer@us-east,trainer@ap-southeast",
        help="comma-separated NAME@REGION replicas to start",
    )
    dev.add_argument("--region", default="eu-west", help="region of the dev dispatcher (default eu-west)")
    dev.add_argument(
        "--bus",
        choices=("redis", "kafka"),
        default="redis",
        help="bus for bus-path tools: the embedded Redis (default) or the bundled Kafka-compatible broker",
    )
    dev.add_argument("--bus-tools", default="trainer.*", help="tools sent over the bus (globs, default trainer.*)")
    dev.add_argument("--config", help="the dispatcher's config file (default: a demo pipeline)")
    dev.add_argument("--temporal-address", help="run pipelines on this Temporal instead of starting the embedded one")

    serve = sub.add_parser("serve", help="run one dispatcher (settings from EDGEFLEET_* variables)")
    serve.add_argument("--host", help="EDGEFLEET_HOST")
    serve.add_argument("--port", type=int, help="EDGEFLEET_PORT")
    serve.add_argument("--redis-url", help="EDGEFLEET_REDIS_URL")
    serve.add_argument("--region", help="EDGEFLEET_REGION")
    serve.add_argument("--config", help="EDGEFLEET_CONFIG_FILE: static MCP servers (TOML/YAML)")

    agent = sub.add_parser("agent", help="run one example agent replica")
    agent.add_argument("name", choices=EXAMPLE_AGENTS)
    agent.add_argument("rest", nargs=argparse.REMAINDER, help="--region R --port P --dispatcher URL")

    url_help = "dispatcher base URL (default: the running `edgefleet dev`, else http://127.0.0.1:8700)"
    tools = sub.add_parser("tools", help="list the federated tools (through /mcp, like any MCP client)")
    tools.add_argument("--url", help=url_help)
    key_help = "API key or bearer token for /mcp (default: EDGEFLEET_API_KEY)"
    tools.add_argument("--key", help=key_help)

    call = sub.add_parser("call", help="call a tool: edgefleet call text.keywords text='hello world' top=3")
    call.add_argument("tool")
    call.add_argument(
        "args",
        nargs="*",
        metavar="KEY=VALUE",
        help="arguments; values are parsed as JSON when they parse, else strings",
    )
    call.add_argument("--json", dest="json_args", help="all arguments as one JSON object")
    call.add_argument("--url", help=url_help)
    call.add_argument("--key", help=key_help)
    call.add_argument("--legacy", action="store_true", help="use the 2025-11-25 session protocol instead of 2026-07-28")

    from edgefleet.dispatcher.cli.tasks import add_parser as add_tasks_parser

    add_tasks_parser(sub, url_help=url_help)

    from edgefleet.dispatcher.cli.pipelines import add_parser as add_pipelines_parser

    add_pipelines_parser(sub, url_help=url_help)

    from edgefleet.dispatcher.cli.audit import add_parser as add_audit_parser

    add_audit_parser(sub, url_help=url_help)

    agents = sub.add_parser("agents", help="inspect or change the registry")
    agents_sub = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    a_list = agents_sub.add_parser("list", help="agents, regions, replicas and their health")
    a_add = agents_sub.add_parser("add", help="add an existing MCP server (any language, streamable HTTP) unchanged")
    a_add.add_argument("name")
    a_add.add_argument("mcp_url", metavar="URL")
    a_add.add_argument("--region", required=True)
    a_remove = agents_sub.add_parser("remove", help="remove every replica of an agent")
    a_remove.add_argument("name")
    for p in (a_list, a_add, a_remove):
        p.add_argument("--url", help=url_help)
        p.add_argument("--token", help="fleet token (default: EDGEFLEET_FLEET_TOKEN or the running `edgefleet dev`)")
    a_list.add_argument("--json", action="store_true", help="raw JSON")

    bench = sub.add_parser(
        "bench",
        help="echo through the dispatcher vs direct to the agent, same run: CPU per call, calls/s, latency",
    )
    bench.add_argument("--concurrency", default="1,16", help="comma-separated concurrent sessions (default 1,16)")
    bench.add_argument("--seconds", type=float, default=3.0, help="seconds per round and path (default 3)")
    bench.add_argument("--rounds", type=int, default=2, help="alternating rounds per path (default 2)")
    bench.add_argument(
        "--scenarios", default="2026,2025,bus", help="2026 (stateless), 2025 (sessions), bus (default: all three)"
    )
    bench.add_argument(
        "--trace-ratio", type=float, default=0.1, help="share of calls the dispatcher traces (default 0.1, 1 = all)"
    )
    bench.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL[=K=V,...|=src:DIR|=python:PATH]",
        help="one more dispatcher in the same run: other settings, another source tree or another interpreter (repeatable)",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON (every round included)")
    bench.add_argument(
        "--fanout", default="", metavar="N,N", help="instead: fan-out overhead for these sub-task counts (e.g. 3,100)"
    )
    bench.add_argument(
        "--paths", default="direct,redis,kafka", help="fan-out bench: direct and/or buses (default direct,redis,kafka)"
    )

    keys = sub.add_parser("keys", help="client API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k_create = keys_sub.add_parser("create", help="make a key: prints it ONCE and adds its hash to the keys file")
    k_create.add_argument(
        "identity", help="who holds the key (shown in logs and the audit trail); with --agent, the agent name"
    )
    k_create.add_argument(
        "--file",
        required=True,
        help="the EDGEFLEET_API_KEYS_FILE (or, with --agent, EDGEFLEET_AGENT_KEYS_FILE) to add it to",
    )
    k_create.add_argument(
        "--agent", action="store_true", help="an agent key: bound to the agent name IDENTITY (its tool namespace)"
    )
    k_create.add_argument("--tools", default="", help="comma-separated globs of tools it may call (default: all)")
    k_create.add_argument("--regions", default="", help="comma-separated regions it may be served in (default: all)")
    k_create.add_argument("--scopes", default="", help="comma-separated scopes, e.g. admin")

    config = sub.add_parser("config", help="print every EDGEFLEET_* setting with its default and meaning")
    config.add_argument("--markdown", action="store_true", help="as the README's configuration table")
    return parser


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dev":
            from edgefleet.dispatcher.devtools.devfleet import run_dev

            return run_dev(
                port=args.port,
                redis_url=args.redis_url,
                agents=args.agents,
                region=args.region,
                bus=args.bus,
                bus_tools=args.bus_tools,
                config=args.config,
                temporal_address=args.temporal_address,
            )
        if args.command == "serve":
            return _serve(args)
        if args.command == "agent":
            import importlib

            module = importlib.import_module(f"edgefleet.agents.examples.{args.name}")
            module.agent.main(args.rest)
            return 0
        if args.command == "bench":
            if args.fanout:
                from edgefleet.dispatcher.devtools.bench_fanout import run_fanout_bench

                return run_fanout_bench(
                    sizes=[int(n) for n in args.fanout.split(",")],
                    paths=args.paths.split(","),
                    rounds=max(1, args.rounds),
                )
            from edgefleet.dispatcher.devtools.bench import run_bench

            return run_bench(
                concurrency=[int(c) for c in _csv(args.concurrency)],
                seconds=args.seconds,
                rounds=max(1, args.rounds),
                scenarios=_csv(args.scenarios),
                trace_ratio=args.trace_ratio,
                variants=args.variant,
                as_json=args.json,
            )
        if args.command == "config":
            from edgefleet.shared.settings import settings_table

            if args.markdown:
                print("| Variable | Default | Meaning |\n|---|---|---|")
                for var, default, description in settings_table():
                    print(f"| `{var}` | {f'`{default}`' if default else ''} | {description.replace('|', '&#124;')} |")
                return 0
            for var, default, description in settings_table():
                print(f"{var:36} {default!s:28} {description}")
            return 0
        from edgefleet.dispatcher.cli import client as client_cli

        if args.command == "tools":
            return client_cli.tools(args.url, args.key)
        if args.command == "call":
            return client_cli.call(args.url, args.tool, args.args, args.json_args, legacy=args.legacy, key=args.key)
        if args.command == "tasks":
            from edgefleet.dispatcher.cli import tasks as tasks_cli

            return tasks_cli.run(args)
        if args.command == "pipelines":
            from edgefleet.dispatcher.cli import pipelines as pipelines_cli

            return pipelines_cli.run(args)
        if args.command == "audit":
            from edgefleet.dispatcher.cli import audit as audit_cli

            return audit_cli.run(args)
        if args.command == "keys" and args.agent:
            return client_cli.create_agent_key(Path(args.file), args.identity, regions=_csv(args.regions))
        if args.command == "keys":
            return client_cli.create_key(
                Path(args.file),
                args.identity,
                tools=_csv(args.tools),
                regions=_csv(args.regions),
                scopes=_csv(args.scopes),
            )
        if args.command == "agents":
            return client_cli.agents(args)
    except ConfigError as exc:
        print(f"edgefleet: configuration error: {printable(exc.message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edgefleet.dispatcher.server import serve
    from edgefleet.shared.logsetup import configure
    from edgefleet.shared.settings import DispatcherSettings, check_environment

    check_environment()
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "redis_url": args.redis_url,
            "region": args.region,
            "config_file": args.config,
        }.items()
        if v is not None
    }
    try:
        settings = DispatcherSettings(**overrides)
    except (ValidationError, ValueError) as exc:  # pydantic's message names the bad variable
        raise ConfigError(str(exc)) from None
    configure(settings.log_level, settings.log_format)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main"]
