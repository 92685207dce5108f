"""Where the settings came from, so that a reload can read them again the same way.

The command line's flags are kept as given: a reload re-reads the config file and the
environment under the same flags, with the same precedence as at start (flag > environment >
file > default). Settings that the process took at start — its sockets, its workers, its log
and metric setup — cannot change while it runs: `RESTART_ONLY` names them, and a reload keeps
their running values and says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, SecretBytes, SecretStr

from guardproxy.config import Settings, load_settings

# Dotted names of the settings a reload cannot apply, each with the reason an operator reads.
RESTART_ONLY: dict[str, str] = {
    "server.listen": "the listening socket is bound once, before the workers start",
    "server.redirect_listen": "the listening socket is bound once, before the workers start",
    "admin.listen": "the listening socket is bound once, before the workers start",
    "server.workers": "the number of worker processes is fixed at start",
    "server.tls_cert": "TLS is turned on or off when the listener starts (other certificate files do reload)",
    "server.tls_key": "TLS is turned on or off when the listener starts (other certificate files do reload)",
    "server.shutdown_timeout": "the listener's graceful-shutdown limit is fixed when it starts",
    "metrics.enabled": "the metric families are created once per process",
    "metrics.multiprocess_dir": "the workers' metric files are set up before they start",
    "logging.level": "logging is configured once per process",
    "logging.format": "logging is configured once per process",
}


# Restart-only settings that do reload from one value to another, only not to or from None: the
# listener's TLS context takes a new certificate and key in place (server/reload.py).
_RELOADABLE_BETWEEN_VALUES = frozenset({"server.tls_cert", "server.tls_key"})


@dataclass(frozen=True)
class ConfigSource:
    """The command line's flags (nested by section) and the config file, as the CLI got them.
    Picklable: the supervisor hands it to every worker it starts."""

    flags: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None

    def load(self, keep: dict[str, Any] | None = None) -> Settings:
        """The settings as they read now; `keep` pins settings (nested by section) over every
        source, flags included. Raises ConfigError naming every problem."""
        flags = {section: dict(values) for section, values in self.flags.items()}
        for section, values in (keep or {}).items():
            flags.setdefault(section, {}).update(values)
        return load_settings(flags, self.config_file)


@dataclass(frozen=True)
class RestartOnlyChange:
    setting: str
    running: object
    wanted: object

    def describe(self) -> str:
        return (
            f"{self.setting}: needs a restart ({RESTART_ONLY[self.setting]}); "
            f"keeping {self.running!r}, the configuration now says {self.wanted!r}"
        )


def restart_only_changes(running: Settings, wanted: Settings) -> list[RestartOnlyChange]:
    """The restart-only settings whose value differs between the running and the new settings."""
    changes = []
    for setting in RESTART_ONLY:
        before, after = _plain(_lookup(running, setting)), _plain(_lookup(wanted, setting))
        if before == after or (setting in _RELOADABLE_BETWEEN_VALUES and None not in (before, after)):
            continue
        changes.append(RestartOnlyChange(setting, before, after))
    return changes


def kept_values(running: Settings, changes: list[RestartOnlyChange]) -> dict[str, Any]:
    """The running values of `changes`, nested by section, for `ConfigSource.load(keep=...)`."""
    kept: dict[str, Any] = {}
    for change in changes:
        section, key = change.setting.split(".")
        kept.setdefault(section, {})[key] = change.running
    return kept


def config_hash(settings: Settings) -> str:
    """A short digest of the effective settings, secrets included (by their own digest), so
    that two instances, or a reload, can be told apart or matched by one value on /readyz."""
    canonical = orjson.dumps(_canonical(settings), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def _lookup(settings: Settings, dotted: str) -> object:
    value: object = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _plain(value: object) -> object:
    """A value as an operator writes it: addresses and paths as strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _canonical(value: object) -> object:
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        raw = secret.encode() if isinstance(secret, str) else secret
        return "secret:" + hashlib.sha256(raw).hexdigest()
    if isinstance(value, BaseModel):
        return {name: _canonical(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(item) for item in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return _plain(value)
