"""config/source.py: reading the settings again as the CLI first read them, telling restart-only
changes apart, and the configuration's hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from guardproxy.config import ConfigError, Settings
from guardproxy.config.source import (
    RESTART_ONLY,
    ConfigSource,
    config_hash,
    kept_values,
    restart_only_changes,
)
from tests.support.tls import write_certificate

UPSTREAM = {"url": "http://127.0.0.1:8000"}


def write(path: Path, **sections: object) -> Path:
    path.write_text(yaml.safe_dump({"upstream": UPSTREAM, **sections}))
    return path


def test_flags_given_at_start_still_outrank_the_file_on_every_load(tmp_path: Path) -> None:
    config = write(tmp_path / "gp.yaml", server={"listen": "127.0.0.1:7000"}, cors={"origins": ["https://a.example"]})
    source = ConfigSource({"server": {"listen": "127.0.0.1:7001"}}, config)
    assert str(source.load().server.listen) == "127.0.0.1:7001"
    write(config, server={"listen": "127.0.0.1:7002"}, cors={"origins": ["https://b.example"]})
    reloaded = source.load()
    assert str(reloaded.server.listen) == "127.0.0.1:7001"
    assert reloaded.cors.origins == ["https://b.example"]


def test_the_environment_is_read_again_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ConfigSource({}, write(tmp_path / "gp.yaml"))
    monkeypatch.setenv("GUARDPROXY_HOSTS__ALLOWED", "api.example")
    assert source.load().hosts.allowed == ["api.example"]


def test_an_invalid_file_raises_every_problem_by_setting_name(tmp_path: Path) -> None:
    config = write(tmp_path / "gp.yaml", server={"workers": 0}, body_limit={"max_bytes": -1}, colour="blue")
    with pytest.raises(ConfigError) as raised:
        ConfigSource({}, config).load()
    text = "\n".join(raised.value.problems)
    for setting in ("server.workers", "body_limit.max_bytes", "colour"):
        assert setting in text


def test_a_missing_file_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        ConfigSource({}, tmp_path / "absent.yaml").load()


def test_keep_pins_a_setting_over_the_file_and_the_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "gp.yaml", server={"workers": 4})
    source = ConfigSource({"server": {"workers": "3"}}, config)
    assert source.load(keep={"server": {"workers": 1}}).server.workers == 1
    assert source.flags == {"server": {"workers": "3"}}  # not changed by the pin


def test_restart_only_changes_name_each_setting_with_both_values() -> None:
    running = Settings(upstream=UPSTREAM, server={"workers": 2, "listen": "127.0.0.1:7000"})
    wanted = Settings(
        upstream=UPSTREAM,
        server={"workers": 4, "listen": "127.0.0.1:7009"},
        logging={"format": "console"},
        cors={"origins": ["https://a.example"]},
    )
    changes = restart_only_changes(running, wanted)
    assert {change.setting for change in changes} == {"server.workers", "server.listen", "logging.format"}
    workers = next(change for change in changes if change.setting == "server.workers")
    assert (workers.running, workers.wanted) == (2, 4)
    assert workers.describe().startswith("server.workers: needs a restart")
    assert kept_values(running, changes) == {
        "server": {"workers": 2, "listen": "127.0.0.1:7000"},
        "logging": {"format": "json"},
    }


def test_reloadable_settings_are_not_restart_only() -> None:
    running = Settings(upstream=UPSTREAM)
    wanted = Settings(
        upstream={**UPSTREAM, "read_timeout": 3},
        cors={"origins": ["https://a.example"]},
        hosts={"allowed": ["api.example"]},
        rate_limit={"per_client_ip": "5/minute"},
        server={"drain_delay": 1, "keep_alive_timeout": 2},
    )
    assert restart_only_changes(running, wanted) == []
    assert all(setting.count(".") == 1 for setting in RESTART_ONLY)


def test_the_hash_follows_every_setting_secrets_included_but_never_shows_them() -> None:
    base = Settings(upstream=UPSTREAM, rate_limit={"redis_url": "redis://:one@127.0.0.1:6379"})
    same = Settings(upstream=UPSTREAM, rate_limit={"redis_url": "redis://:one@127.0.0.1:6379"})
    other_secret = Settings(upstream=UPSTREAM, rate_limit={"redis_url": "redis://:two@127.0.0.1:6379"})
    other_origin = Settings(upstream=UPSTREAM, cors={"origins": ["https://a.example"]})
    assert config_hash(base) == config_hash(same)
    assert len({config_hash(base), config_hash(other_secret), config_hash(other_origin)}) == 3
    assert "one" not in config_hash(base)
    assert len(config_hash(base)) == 16


def test_other_certificate_files_reload_but_turning_tls_on_or_off_does_not(tmp_path: Path) -> None:
    _, cert, key = write_certificate(tmp_path, "localhost")
    other = tmp_path / "other"
    other.mkdir()
    _, other_cert, other_key = write_certificate(other, "localhost")
    plain = Settings(upstream=UPSTREAM)
    tls = Settings(upstream=UPSTREAM, server={"tls_cert": cert, "tls_key": key})
    rotated = Settings(upstream=UPSTREAM, server={"tls_cert": other_cert, "tls_key": other_key})
    assert restart_only_changes(tls, rotated) == []
    assert {change.setting for change in restart_only_changes(plain, tls)} == {"server.tls_cert", "server.tls_key"}
    assert {change.setting for change in restart_only_changes(tls, plain)} == {"server.tls_cert", "server.tls_key"}
