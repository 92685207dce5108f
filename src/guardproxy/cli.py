"""The `guardproxy` command: run, check-config, reload, audit, version.

Every flag is also a config-file key and an environment variable; the mapping is the `FLAGS`
table below, so `--help`, the README and the loader cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guardproxy import __version__, control
from guardproxy.audit import command as audit_command
from guardproxy.buildinfo import build_kind
from guardproxy.config import (
    CONFIG_FILE_ENV,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    ConfigError,
    Settings,
)
from guardproxy.config.source import ConfigSource

EXIT_CONFIG_ERROR = 2


@dataclass(frozen=True)
class Flag:
    option: str
    setting: str  # dotted path in the config file
    help: str
    metavar: str = "VALUE"
    repeatable: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.setting.upper().replace(".", ENV_NESTED_DELIMITER)


FLAGS = (
    Flag("--upstream", "upstream.url", "upstream origin, e.g. http://127.0.0.1:8000", "URL"),
    Flag("--listen", "server.listen", "proxy listener [0.0.0.0:8080]", "HOST:PORT"),
    Flag(
        "--admin-listen", "admin.listen", "admin listener for /healthz /readyz /metrics [127.0.0.1:9090]", "HOST:PORT"
    ),
    Flag("--workers", "server.workers", "worker processes [1]", "N"),
    Flag("--log-level", "logging.level", "debug, info, warning, error or critical [info]", "LEVEL"),
    Flag("--tls-cert", "server.tls_cert", "terminate TLS with this PEM certificate chain", "FILE"),
    Flag("--tls-key", "server.tls_key", "the PEM private key for --tls-cert", "FILE"),
    Flag("--redirect-listen", "server.redirect_listen", "plain-HTTP listener that redirects to HTTPS", "HOST:PORT"),
    Flag(
        "--trusted-proxy",
        "trusted_proxies.cidrs",
        "believe X-Forwarded-* from this peer (repeatable)",
        "CIDR",
        repeatable=True,
    ),
    Flag(
        "--cors-origin",
        "cors.origins",
        "let pages from this origin read responses; https://*.example.com for subdomains (repeatable)",
        "ORIGIN",
        repeatable=True,
    ),
    Flag(
        "--allowed-host",
        "hosts.allowed",
        "answer only to this Host; *.example.com for subdomains (repeatable)",
        "HOST",
        repeatable=True,
    ),
    Flag("--rate-limit", "rate_limit.per_client_ip", "limit each client address, e.g. 100/minute", "N/PERIOD"),
    Flag("--redis-url", "rate_limit.redis_url", "share rate limits through Redis (else per process)", "URL"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardproxy",
        description="A hardening reverse proxy for HTTP APIs.",
        epilog="Every option is also a config-file key and a GUARDPROXY_* environment variable "
        "(precedence: flag > environment > file > default).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "run the proxy"),
        ("check-config", "print the effective configuration, or every problem in it"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", type=Path, metavar="FILE", help=f"YAML config file (or ${CONFIG_FILE_ENV})")
        for flag in FLAGS:
            command.add_argument(
                flag.option,
                dest=flag.setting,
                metavar=flag.metavar,
                action="append" if flag.repeatable else "store",
                help=f"{flag.help}; file key {flag.setting}, env {flag.env}"
                + (" (comma-separated)" if flag.repeatable else ""),
            )
        if name == "run":
            command.add_argument(
                "--pid-file", type=Path, metavar="FILE", help="write the process ID here (for `guardproxy reload`)"
            )
    reload = commands.add_parser(
        "reload",
        help="make a running guardproxy re-read its configuration (sends SIGHUP)",
        description="Send SIGHUP to a running guardproxy: it re-reads its config file and environment, "
        "under the flags it was started with, and logs what it applied or refused.",
    )
    target = reload.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=int, help="the process ID of `guardproxy run` (1 in its container)")
    target.add_argument("--pid-file", type=Path, metavar="FILE", help="the file `guardproxy run --pid-file` wrote")
    audit_command.add_parser(commands)
    commands.add_parser("version", help="print the version")
    return parser


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for flag in FLAGS:
        value = getattr(args, flag.setting)
        if value is not None:
            section, key = flag.setting.split(".")
            nested.setdefault(section, {})[key] = value
    return nested


def _source(args: argparse.Namespace) -> ConfigSource:
    config_file = args.config or (Path(os.environ[CONFIG_FILE_ENV]) if os.environ.get(CONFIG_FILE_ENV) else None)
    return ConfigSource(_flag_values(args), config_file)


def effective_config_yaml(settings: Settings) -> str:
    """The configuration as YAML; secrets are rendered redacted by their pydantic types."""
    values = settings.model_dump(mode="json")
    for section in ("server", "admin"):
        values[section]["listen"] = str(getattr(settings, section).listen)
    if settings.server.redirect_listen is not None:
        values["server"]["redirect_listen"] = str(settings.server.redirect_listen)
    return yaml.safe_dump(values, sort_keys=False)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per command and error
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"guardproxy {__version__} ({build_kind()})")
        return 0
    if args.command == "audit":
        return audit_command.main(args)
    if args.command == "reload":
        return control.send_reload(args.pid, args.pid_file)
    source = _source(args)
    try:
        settings = source.load()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"guardproxy: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.command == "check-config":
        print(effective_config_yaml(settings), end="")
        return 0

    # Imported here so `version` and `check-config` do not load the server stack.
    from guardproxy.server.process import StartupError, run  # noqa: PLC0415

    if args.pid_file is not None:
        control.write_pid_file(args.pid_file)
    try:
        return run(settings, source)
    except StartupError as exc:
        print(f"guardproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        return 0
    finally:
        if args.pid_file is not None:
            control.remove_pid_file(args.pid_file)
