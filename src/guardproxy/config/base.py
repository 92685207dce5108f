"""Building blocks of the settings: sections, listen addresses, comma lists, errors."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_settings import (
    NoDecode,
)

from guardproxy.routes import PatternError, compile_path_pattern

ENV_PREFIX = "GUARDPROXY_"
ENV_NESTED_DELIMITER = "__"
CONFIG_FILE_ENV = "GUARDPROXY_CONFIG"


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    # A typo in a config file must fail the start, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(Section):
    """A `HOST:PORT` listen address; IPv6 hosts in brackets (`[::1]:8080`)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)]

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            ipaddress.IPv6Address(host)
        elif ":" in host:
            raise ValueError(f"IPv6 hosts go in brackets, e.g. [::1]:8080, got {value!r}")
        return {"host": host, "port": int(port)}

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def default_address(value: str) -> Any:
    return Field(default_factory=lambda: Address.model_validate(value))


# NoDecode: an environment value such as GUARDPROXY_SERVER__LISTEN=0.0.0.0:8080 is a HOST:PORT
# string, not JSON for the Address model.
ListenAddress = Annotated[Address, NoDecode]


def _comma_separated(value: Any) -> Any:
    """Lists may come from the environment as `a,b,c` (GUARDPROXY_TRUSTED_PROXIES__CIDRS=...)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]


def _path_pattern(value: str) -> str:
    try:
        compile_path_pattern(value)
    except PatternError as exc:
        raise ValueError(f"bad path pattern {value!r}: {exc}") from None
    return value


def _methods(value: list[str]) -> list[str]:
    methods = [method.upper() for method in value]
    for method in methods:
        if not re.fullmatch(r"[A-Z]{1,32}", method):
            raise ValueError(f"not an HTTP method: {method!r}")
    return methods


# A route pattern (see guardproxy.routes), checked at start.
PathPattern = Annotated[str, AfterValidator(_path_pattern)]
# HTTP methods, upper-cased.
MethodList = Annotated[list[str], AfterValidator(_methods)]
# A route's or a rule's name: it labels metrics and logs, so short and plain.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
