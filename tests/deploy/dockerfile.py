"""A small Dockerfile reader and the rules the image must follow, as a list of problems.

There is no Docker engine on these machines, so the image is checked from its recipe: what the
runtime stage contains, which user it runs as, which ports it announces and how it checks itself.
The rules return problems rather than asserting, so tests can also prove each rule catches the
mistake it exists for.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Tools a runtime image must not carry: downloaders and compilers widen what an attacker who gets
# code execution can do, and the health check must not depend on them.
FORBIDDEN_RUNTIME_TOOLS = ("curl", "wget", "gcc", "build-essential", "apt-get", "apk", "make")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|REDIS_URL|CREDENTIAL", re.IGNORECASE)
RUNTIME_UID = 10001


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]


def parse(text: str) -> Dockerfile:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages and instruction.keyword == "ARG":
            key, _, value = instruction.arguments.partition("=")
            global_args[key] = value
        elif stages:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def env_values(stage: Stage) -> dict[str, str]:
    """ENV key=value pairs of a stage, later ones winning."""
    values: dict[str, str] = {}
    for item in stage.all("ENV"):
        for pair in shlex.split(item.arguments):
            key, sep, value = pair.partition("=")
            if sep:
                values[key] = value
    return values


def exec_form(arguments: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(item, str) for item in value) else None


def healthcheck_command(stage: Stage) -> tuple[dict[str, str], list[str] | None]:
    """The HEALTHCHECK's options (--interval=10s ...) and its exec-form command."""
    item = stage.last("HEALTHCHECK")
    if item is None:
        return {}, None
    options: dict[str, str] = {}
    rest = item.arguments
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.lstrip()
    if not rest.upper().startswith("CMD "):
        return options, None
    return options, exec_form(rest[4:].strip())


def seconds(duration: str) -> float:
    """A Docker duration such as 3s, 500ms or 1m30s, in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def problems(text: str) -> list[str]:
    """Everything wrong with a Dockerfile against the image's rules; empty when it is fine."""
    dockerfile = parse(text)
    found: list[str] = []
    if len(dockerfile.stages) < 2:
        return ["the image must be built in stages: a builder and a runtime"]
    runtime = dockerfile.runtime
    found += _base_image_problems(dockerfile)
    found += _runtime_content_problems(runtime)
    found += _user_problems(runtime)
    found += _port_problems(runtime)
    found += _secret_problems(dockerfile)
    found += _healthcheck_problems(runtime)
    entrypoint = runtime.last("ENTRYPOINT")
    if entrypoint is None or exec_form(entrypoint.arguments) != ["guardproxy"]:
        found.append('ENTRYPOINT must be ["guardproxy"] in exec form, so signals reach guardproxy')
    return found


def _base_image_problems(dockerfile: Dockerfile) -> list[str]:
    found = []
    for stage in dockerfile.stages:
        base = re.sub(r"\$\{(\w+)\}", lambda match: dockerfile.global_args.get(match[1], ""), stage.base)
        if not re.fullmatch(r"python:3\.11-slim(-\w+)?", base):
            found.append(f"stage {stage.name or '?'} must start from a python:3.11-slim image, not {base!r}")
    return found


def _runtime_content_problems(runtime: Stage) -> list[str]:
    found = []
    for item in runtime.all("RUN"):
        words = set(re.split(r"[\s;&|()]+", item.arguments))
        for tool in FORBIDDEN_RUNTIME_TOOLS:
            if tool in words:
                found.append(f"line {item.line}: the runtime stage must not use or install {tool}")
        # Removing the base's own pip (pip uninstall) is the one use of pip the runtime may make.
        if "install" in words or ("pip" in words and "uninstall" not in words):
            found.append(f"line {item.line}: the runtime stage must not install packages; copy them from the builder")
    for item in runtime.all("COPY") + runtime.all("ADD"):
        if item.keyword == "ADD" or "--from=" not in item.arguments:
            found.append(f"line {item.line}: the runtime stage may only copy from the builder stage")
    return found


def _user_problems(runtime: Stage) -> list[str]:
    user = runtime.last("USER")
    if user is None:
        return ["the runtime stage must set USER, or the container runs as root"]
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.arguments)
    if match is None:
        return [f"USER must be a numeric UID[:GID] (Kubernetes runAsNonRoot needs one), not {user.arguments!r}"]
    if int(match[1]) == 0 or (match[2] is not None and int(match[2]) == 0):
        return ["USER must not be root (UID or GID 0)"]
    if int(match[1]) != RUNTIME_UID:
        return [f"USER must be the fixed UID {RUNTIME_UID} that the Helm chart's runAsUser names"]
    return []


def _port_problems(runtime: Stage) -> list[str]:
    found = []
    env = env_values(runtime)
    exposed = {int(port.split("/")[0]) for item in runtime.all("EXPOSE") for port in item.arguments.split()}
    for variable in ("GUARDPROXY_SERVER__LISTEN", "GUARDPROXY_ADMIN__LISTEN"):
        address = env.get(variable)
        if address is None:
            found.append(f"{variable} must be set: the defaults bind the admin listener to loopback only")
            continue
        if not address.startswith("0.0.0.0:"):
            found.append(f"{variable} must bind every interface inside a container, not {address!r}")
        if listen_port(address) not in exposed:
            found.append(f"{variable} port {listen_port(address)} must be EXPOSEd (exposed: {sorted(exposed)})")
    if len(exposed) != 2:
        found.append(f"EXPOSE exactly the proxy and admin ports, not {sorted(exposed)}")
    multiproc = env.get("GUARDPROXY_METRICS__MULTIPROCESS_DIR")
    if multiproc is None or not multiproc.startswith("/tmp/"):
        found.append("GUARDPROXY_METRICS__MULTIPROCESS_DIR must be below /tmp, the only writable place")
    return found


def _secret_problems(dockerfile: Dockerfile) -> list[str]:
    names = list(dockerfile.global_args)
    for stage in dockerfile.stages:
        names += list(env_values(stage)) + [item.arguments.partition("=")[0] for item in stage.all("ARG")]
    found = [
        f"{name} looks like a secret: pass it at run time, never bake it in"
        for name in names
        if SECRET_NAME.search(name)
    ]
    if "GUARDPROXY_CONFIG" in env_values(dockerfile.runtime):
        found.append("GUARDPROXY_CONFIG must not be baked in: the config file is mounted at run time")
    return found


def _healthcheck_problems(runtime: Stage) -> list[str]:
    options, command = healthcheck_command(runtime)
    if command is None:
        return ["HEALTHCHECK CMD must be in exec form (a JSON array)"]
    found = []
    if command[0] != "python":
        found.append(f"HEALTHCHECK must run python (the image has no curl or wget), not {command[0]!r}")
    script = command[-1]
    if "/healthz" not in script:
        found.append("HEALTHCHECK must probe the admin listener's /healthz")
    if "GUARDPROXY_ADMIN__LISTEN" not in script:
        found.append("HEALTHCHECK must take the admin port from GUARDPROXY_ADMIN__LISTEN")
    timeout = re.search(r"timeout=(\d+(?:\.\d+)?)\)", script)
    if "timeout" not in options or timeout is None:
        found.append("HEALTHCHECK needs --timeout and the probe its own shorter timeout")
    elif float(timeout[1]) >= seconds(options["timeout"]):
        found.append("the probe's own timeout must be shorter than HEALTHCHECK --timeout, so it fails cleanly")
    return found


def dockerignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def copied_from_context(dockerfile: Dockerfile) -> list[str]:
    """Source paths of every COPY that reads the build context (not another stage)."""
    sources = []
    for stage in dockerfile.stages:
        for item in stage.all("COPY"):
            if "--from=" in item.arguments:
                continue
            words = [word for word in item.arguments.split() if not word.startswith("--")]
            sources += words[:-1]
    return sources


def dockerignore_problems(ignore_text: str, dockerfile_text: str) -> list[str]:
    """.dockerignore must be an allowlist that lets in exactly what the Dockerfile copies."""
    patterns = dockerignore_patterns(ignore_text)
    if not patterns or patterns[0] != "*":
        return ["the .dockerignore must start with * and allow back only what the build needs"]
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    needed = {source.rstrip("/").removeprefix("./") for source in copied_from_context(parse(dockerfile_text))}
    found = [
        f"{source} is copied by the Dockerfile but excluded by .dockerignore" for source in sorted(needed - allowed)
    ]
    found += [f"{extra} is let into the build context but never copied" for extra in sorted(allowed - needed)]
    return found
