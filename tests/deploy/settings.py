"""Environment variables checked against guardproxy's settings model.

pydantic-settings ignores a GUARDPROXY_* variable whose first section does not exist, so a
misspelt variable in a Dockerfile, a compose file or a chart would be dropped without a word.
These checks name it instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel

from guardproxy.config import CONFIG_FILE_ENV, ENV_NESTED_DELIMITER, ENV_PREFIX, Settings


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            model = _model_in(member)
            if model is not None:
                return model
    return None


def is_setting(variable: str) -> bool:
    """Whether GUARDPROXY_SECTION__KEY names a real setting (GUARDPROXY_CONFIG is the file's path)."""
    if variable == CONFIG_FILE_ENV:
        return True
    if not variable.startswith(ENV_PREFIX):
        return False
    model: type[BaseModel] | None = Settings
    for part in variable.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED_DELIMITER):
        if model is None:
            return True  # below a plain value (a dict or list): not the model's to judge
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = _model_in(field.annotation)
    return True


def unknown_settings(env: dict[str, str]) -> list[str]:
    return sorted(name for name in env if name.startswith(ENV_PREFIX) and not is_setting(name))


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`guardproxy check-config` with exactly these GUARDPROXY_* variables (none from this shell)."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("GUARDPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "guardproxy", "check-config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
