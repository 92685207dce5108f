"""Settings loading (config.py): precedence, merging, and one named line per problem.

The command line built on it is tested in test_cli.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trustme

from guardproxy.config import ConfigError, Settings, load_settings

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:8000"}}
EXAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "config" / "guardproxy.yaml"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ambient GUARDPROXY_* variables would silently change what every test here loads.
    for name in list(os.environ):
        if name.startswith("GUARDPROXY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "guardproxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(flags: dict[str, Any], config_file: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, config_file)
    assert caught.value.problems, "a ConfigError must name at least one problem"
    assert all("\n" not in problem for problem in caught.value.problems)
    return caught.value.problems


# --- precedence: flag > environment > file > default -------------------------------------------


def test_defaults_apply_when_only_the_upstream_is_given() -> None:
    settings = load_settings(UPSTREAM)
    assert settings.upstream.read_timeout == 60.0
    assert settings.server.workers == 1
    assert str(settings.server.listen) == "0.0.0.0:8080"
    assert str(settings.admin.listen) == "127.0.0.1:9090"


def test_flag_beats_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "upstream:\n  url: http://file:1\n  read_timeout: 11\nserver:\n  workers: 2\n")
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__URL", "http://env:2")
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__READ_TIMEOUT", "22")
    settings = load_settings({"upstream": {"url": "http://flag:3"}}, path)
    assert settings.upstream.url == "http://flag:3"  # flag over env and file
    assert settings.upstream.read_timeout == 22.0  # env over file
    assert settings.server.workers == 2  # file over default


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "upstream:\n  url: http://file:1\nserver:\n  workers: 2\n")
    monkeypatch.setenv("GUARDPROXY_SERVER__WORKERS", "5")
    assert load_settings({}, path).server.workers == 5


def test_nested_sections_merge_across_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "upstream:\n  url: http://file:1\n  connect_timeout: 3\n")
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__READ_TIMEOUT", "9")
    upstream = load_settings({"upstream": {"max_connections": 7}}, path).upstream
    assert (upstream.url, upstream.connect_timeout, upstream.read_timeout) == ("http://file:1", 3.0, 9.0)
    assert upstream.max_connections == 7


def test_file_values_do_not_leak_into_the_next_load(tmp_path: Path) -> None:
    load_settings({}, write(tmp_path, "upstream:\n  url: http://file:1\n"))
    assert problems_of({}) == ["upstream.url: is required"]


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(UPSTREAM, write(tmp_path, "")).server.workers == 1


@pytest.mark.parametrize(("value", "expected"), [("INFO", "info"), ("Debug", "debug"), ("critical", "critical")])
def test_log_level_is_case_insensitive(value: str, expected: str) -> None:
    assert load_settings({**UPSTREAM, "logging": {"level": value}}).logging.level == expected


@pytest.mark.parametrize(("listen", "host", "port"), [("[::1]:8080", "::1", 8080), ("10.0.0.1:1", "10.0.0.1", 1)])
def test_valid_listen_addresses(listen: str, host: str, port: int) -> None:
    address = load_settings({**UPSTREAM, "server": {"listen": listen}}).server.listen
    assert (address.host, address.port, str(address)) == (host, port, listen)


def test_readable_ca_file_is_accepted(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    settings = load_settings({"upstream": {"url": "https://up", "ca_file": str(ca_file)}})
    assert settings.upstream.ca_file == ca_file


# --- every problem is one line naming its dotted setting ----------------------------------------


def route(name: str = "api", path: str = "/api/**", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, **extra}


BAD_SETTINGS = [
    pytest.param({"upstream": {"url": "not a url"}}, "upstream.url: ", id="url-not-a-url"),
    pytest.param({"upstream": {"url": "ftp://x"}}, "upstream.url: ", id="url-ftp"),
    pytest.param({"upstream": {"url": "http://host/path"}}, "upstream.url: ", id="url-path"),
    pytest.param({"upstream": {"url": "http://host?q=1"}}, "upstream.url: ", id="url-query"),
    pytest.param({"upstream": {"url": "http://user@host"}}, "upstream.url: ", id="url-user"),
    pytest.param({"upstream": {"url": "http://host:99999"}}, "upstream.url: ", id="url-port-range"),
    pytest.param({"upstream": {"url": "http://[::1"}}, "upstream.url: ", id="url-broken-ipv6"),
    pytest.param({"upstream": {"read_timeout": 3}}, "upstream.url: is required", id="url-missing"),
    pytest.param({"upstream": {"url": "http://h", "read_timeout": 0}}, "upstream.read_timeout: ", id="t0"),
    pytest.param({**UPSTREAM, "server": {"workers": 0}}, "server.workers: ", id="workers-0"),
    pytest.param({**UPSTREAM, "server": {"workers": 65}}, "server.workers: ", id="workers-65"),
    pytest.param({**UPSTREAM, "server": {"workers": "many"}}, "server.workers: ", id="workers-text"),
    pytest.param({**UPSTREAM, "server": {"listen": "foo"}}, "server.listen: ", id="listen-no-port"),
    pytest.param({**UPSTREAM, "server": {"listen": "1.2.3.4:0"}}, "server.listen.port: ", id="listen-port-0"),
    pytest.param({**UPSTREAM, "server": {"listen": "1.2.3.4:65536"}}, "server.listen.port: ", id="listen-port-big"),
    pytest.param({**UPSTREAM, "server": {"listen": "::1:80"}}, "server.listen: IPv6 hosts go in brackets", id="v6"),
    pytest.param({**UPSTREAM, "server": {"listen": "[zz]:80"}}, "server.listen: ", id="listen-bad-v6"),
    pytest.param({**UPSTREAM, "server": {"listen": "1.2.3.4:80\n"}}, "server.listen: ", id="listen-newline"),
    pytest.param(
        {**UPSTREAM, "admin": {"listen": "0.0.0.0:8080"}}, "(top level): server.listen, admin.listen", id="same"
    ),
    pytest.param({**UPSTREAM, "logging": {"level": "loud"}}, "logging.level: ", id="log-level"),
    pytest.param({**UPSTREAM, "routes": [route(), route()]}, "routes: route name 'api' is used twice", id="dup-route"),
    pytest.param({**UPSTREAM, "routes": [route("default")]}, "routes: route name 'default'", id="route-default"),
    pytest.param({**UPSTREAM, "routes": [route("a b")]}, "routes.0.name: ", id="route-name-space"),
    pytest.param({**UPSTREAM, "routes": [route("api\n")]}, "routes.0.name: ", id="route-name-newline"),
    pytest.param({**UPSTREAM, "routes": [route(path="no-slash")]}, "routes.0.path: bad path pattern", id="no-slash"),
    pytest.param({**UPSTREAM, "routes": [route(path="/a/**/b")]}, "routes.0.path: bad path pattern", id="mid-**"),
    pytest.param({**UPSTREAM, "routes": [route(path="/a**")]}, "routes.0.path: bad path pattern", id="partial-**"),
    pytest.param({**UPSTREAM, "routes": [route(path="/{bad")]}, "routes.0.path: bad path pattern", id="brace"),
    pytest.param({**UPSTREAM, "routes": [route(methods=["GE T"])]}, "routes.0.methods: not an HTTP method", id="meth"),
    pytest.param({**UPSTREAM, "routes": [route(methods=[""])]}, "routes.0.methods: not an HTTP", id="meth-empty"),
    pytest.param({"upstream": {"url": "http://h", "ca_file": "/nonexistent/ca.pem"}},
                 "upstream.ca_file: cannot load CA file", id="ca-missing"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "prefix"), BAD_SETTINGS)
def test_each_problem_names_its_setting(flags: dict[str, Any], prefix: str) -> None:
    problems = problems_of(flags)
    assert len(problems) == 1, problems
    assert problems[0].startswith(prefix), problems


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of({"upstream": {"url": "ftp://x"}, "server": {"workers": 0, "listen": "foo"}})
    assert sorted(p.split(":")[0] for p in problems) == ["server.listen", "server.workers", "upstream.url"]


def test_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    bogus = write(tmp_path, "not a certificate", "ca.pem")
    [problem] = problems_of({"upstream": {"url": "https://up", "ca_file": str(bogus)}})
    assert problem.startswith("upstream.ca_file: cannot load CA file")


def test_missing_upstream_names_the_url_setting() -> None:
    assert problems_of({}) == ["upstream.url: is required"]


@pytest.mark.parametrize("url", ["http://:secret@host", "http://@host"])
def test_upstream_url_with_empty_user_info_is_rejected(url: str) -> None:
    assert problems_of({"upstream": {"url": url}})[0].startswith("upstream.url: ")


def test_non_ascii_method_is_rejected() -> None:
    assert problems_of({**UPSTREAM, "routes": [route(methods=["GÉT"])]})[0].startswith("routes.0.methods: ")


# --- the config file -----------------------------------------------------------------------------

BAD_FILES = [
    pytest.param("upstream:\n  url: http://x\n  urll: y\n", "upstream.urll: is not a known setting", id="unknown-key"),
    pytest.param("upstream:\n  url: http://x\nbogus: 1\n", "bogus: is not a known setting", id="unknown-section"),
    pytest.param("- a\n- b\n", "the top level must be a mapping of sections", id="top-level-list"),
    pytest.param("just a string\n", "the top level must be a mapping of sections", id="top-level-scalar"),
    pytest.param("upstream: 5\n", "upstream: ", id="section-not-mapping"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_config_file(tmp_path: Path, text: str, expected: str) -> None:
    [problem] = problems_of({}, write(tmp_path, text))
    assert expected in problem


@pytest.mark.parametrize(("text", "line"), [("upstream:\n  url: [open\n", 3), ("a: b: c\n", 1), ("x:\n\ty: 1\n", 2)])
def test_invalid_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    [problem] = problems_of({}, path)
    assert problem.startswith(f"config file {str(path)!r}: line {line}, column ")


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_config_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    [problem] = problems_of({}, path)
    assert problem.startswith(f"config file {str(path)!r}: ")


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"upstream:\n  url: http://caf\xe9\n")
    assert problems_of({}, path)[0].startswith(f"config file {str(path)!r}")


def test_example_config_loads() -> None:
    if not EXAMPLE_CONFIG.is_file():
        pytest.skip(f"{EXAMPLE_CONFIG} is not written yet")
    assert isinstance(load_settings({}, EXAMPLE_CONFIG), Settings)
