"""Settings of named routes and what each may override."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    Field,
    field_validator,
)

from guardproxy.config.base import Section
from guardproxy.config.guards import BodyLimitOverride, CorsOverride
from guardproxy.config.server import TimeoutOverrides
from guardproxy.routes import PatternError, compile_path_pattern


class RouteSettings(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    path: str
    methods: list[str] | None = None
    upstream: TimeoutOverrides = TimeoutOverrides()
    body_limit: BodyLimitOverride = BodyLimitOverride()
    cors: CorsOverride = CorsOverride()

    @field_validator("path")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        try:
            compile_path_pattern(value)
        except PatternError as exc:
            raise ValueError(f"bad path pattern {value!r}: {exc}") from None
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        methods = [method.upper() for method in value]
        for method in methods:
            if not re.fullmatch(r"[A-Z]{1,32}", method):
                raise ValueError(f"not an HTTP method: {method!r}")
        return methods
