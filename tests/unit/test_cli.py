"""The `guardproxy` command line (cli.py): check-config, run's error path, version, the FLAGS table."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from guardproxy import __version__, cli
from guardproxy.buildinfo import build_kind
from guardproxy.config import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ambient GUARDPROXY_* variables would silently change what every test here loads.
    for name in list(os.environ):
        if name.startswith("GUARDPROXY_"):
            monkeypatch.delenv(name)


def test_check_config_prints_the_effective_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check-config", "--upstream", "http://127.0.0.1:9", "--workers", "3", "--listen", "[::1]:8081"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    values = yaml.safe_load(out)
    assert values["upstream"]["url"] == "http://127.0.0.1:9"
    assert values["server"]["workers"] == 3
    assert values["server"]["listen"] == "[::1]:8081"
    assert values["admin"]["listen"] == "127.0.0.1:9090"


def test_check_config_reads_the_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "guardproxy.yaml"
    config_file.write_text("upstream:\n  url: http://from-file:1\n", encoding="utf-8")
    monkeypatch.setenv("GUARDPROXY_CONFIG", str(config_file))
    assert cli.main(["check-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["upstream"]["url"] == "http://from-file:1"


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["run", "--upstream", "not a url"], "upstream.url"),
        (["check-config", "--upstream", "http://h", "--workers", "abc"], "server.workers"),
        (["check-config", "--upstream", "http://h", "--log-level", "loud"], "logging.level"),
    ],
)
def test_configuration_error_is_one_line_and_exit_2(
    argv: list[str], setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == cli.EXIT_CONFIG_ERROR == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"guardproxy: configuration error: {setting}")
    assert "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"guardproxy {__version__} ({build_kind()})\n"


@pytest.mark.parametrize("argv", [[], ["serve"], ["run", "--bogus", "1"], ["check-config", "--workers"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("usage: guardproxy")


@pytest.mark.parametrize("flag", cli.FLAGS, ids=lambda flag: flag.option)
def test_flag_env_name_follows_the_scheme(flag: cli.Flag) -> None:
    section, key = flag.setting.split(".")
    assert re.fullmatch(r"GUARDPROXY_[A-Z_]+__[A-Z_]+", flag.env)
    assert flag.env == f"GUARDPROXY_{section.upper()}__{key.upper()}"


@pytest.mark.parametrize("flag", cli.FLAGS, ids=lambda flag: flag.option)
def test_flag_setting_exists(flag: cli.Flag) -> None:
    model: type[BaseModel] = Settings
    *sections, key = flag.setting.split(".")
    for section in sections:
        annotation = model.model_fields[section].annotation
        assert isinstance(annotation, type)
        assert issubclass(annotation, BaseModel)
        model = annotation
    assert key in model.model_fields


ENV_EXAMPLES = {
    "upstream.url": ("http://env:1", "http://env:1"),
    "server.listen": ("127.0.0.1:7000", "127.0.0.1:7000"),
    "admin.listen": ("127.0.0.1:7001", "127.0.0.1:7001"),
    "server.workers": ("3", 3),
    "logging.level": ("DEBUG", "debug"),
    "cors.origins": (
        "https://app.example.com,https://*.example.org",
        ["https://app.example.com", "https://*.example.org"],
    ),
    "trusted_proxies.cidrs": ("10.0.0.0/8, 192.0.2.7", ["10.0.0.0/8", "192.0.2.7"]),
    "hosts.allowed": ("api.example.com,*.Example.org", ["api.example.com", "*.example.org"]),
    "rate_limit.per_client_ip": ("100/minute", "100/minute"),
    # Printed redacted: the URL may carry Redis' password.
    "rate_limit.redis_url": ("redis://:hunter2@cache:6379/0", "**********"),
}


# The TLS flags only validate together (with real files): tests/integration/test_tls.py.
TLS_SETTINGS = {"server.tls_cert", "server.tls_key", "server.redirect_listen"}


def test_every_flag_has_an_env_example_or_a_tls_test() -> None:
    assert {flag.setting for flag in cli.FLAGS} == set(ENV_EXAMPLES) | TLS_SETTINGS


@pytest.mark.parametrize("flag", [pytest.param(f, id=f.option) for f in cli.FLAGS if f.setting in ENV_EXAMPLES])
def test_flag_env_variable_is_honoured(
    flag: cli.Flag, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, expected = ENV_EXAMPLES[flag.setting]
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__URL", "http://default-up:1")
    monkeypatch.setenv(flag.env, raw)
    assert cli.main(["check-config"]) == 0
    section, key = flag.setting.split(".")
    assert yaml.safe_load(capsys.readouterr().out)[section][key] == expected


@pytest.mark.parametrize(("name", "value"), [("GUARDPROXY_UPSTREAM", "x"), ("GUARDPROXY_ROUTES", "[{")])
def test_malformed_structured_env_value_is_a_config_error(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    assert cli.main(["check-config", "--upstream", "http://h"]) == 2
    assert capsys.readouterr().err.startswith("guardproxy: configuration error: ")
