"""Builds guardproxy: the hot path compiled to C with mypyc when it can be, pure Python otherwise.

Everything else about the package is in pyproject.toml; this file only decides the extension
modules. COMPILED_MODULES is the one list of compiled modules (docs/architecture.md, "Compiled
build", says what code in them must respect).

- `GUARDPROXY_PURE_PYTHON=1` builds the pure-Python package, and so does an editable install
  (compiled modules next to their sources would shadow every edit).
- Without a C compiler or the Python headers the build falls back to pure Python and says so.
- mypy (mypyc) is pinned in [build-system].requires; mypy type-checks the compiled modules with
  `--no-site-packages`, so the installed libraries do not change what is compiled: their types
  are Any to mypyc, which only costs a little speed where guardproxy calls them.
- Each build writes its C sources and objects into a fresh temporary directory, removed at the
  end: a stale `build/` can never ship a stale `.so`.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

# Relative to src/. The modules a request runs through with the defaults (and the cheap guards
# a deployment usually turns on: hosts, CORS), and the types they use; callgrind on
# bench/inprocess.py shows what still runs interpreted. Not here: start-up, configuration and
# reload code (runs once), the stores behind rate limiting, idempotency and auth (a network
# round trip dwarfs their Python), exceptions with class attributes (proxy/errors.py,
# server/disconnect.py), and the audit tool. The rules for code in these modules:
# docs/architecture.md, "Compiled build".
COMPILED_MODULES = [
    "guardproxy/answer.py",
    "guardproxy/asgi.py",
    "guardproxy/context.py",
    "guardproxy/outcomes.py",
    "guardproxy/problems.py",
    "guardproxy/routes.py",
    "guardproxy/http1/fields.py",
    "guardproxy/http1/flow.py",
    "guardproxy/http1/framing.py",
    "guardproxy/http1/targets.py",
    "guardproxy/server/exchange.py",
    "guardproxy/server/limits.py",
    "guardproxy/server/protocol.py",
    "guardproxy/server/refusals.py",
    "guardproxy/server/runner.py",
    "guardproxy/proxy/connection.py",
    "guardproxy/proxy/forwarder.py",
    "guardproxy/proxy/pool.py",
    "guardproxy/proxy/transport.py",
    # Upstream resilience: with the defaults (retries and a breaker) every request passes here.
    "guardproxy/proxy/balancer.py",
    "guardproxy/proxy/breaker.py",
    "guardproxy/proxy/endpoints.py",
    "guardproxy/proxy/resilient.py",
    "guardproxy/guards/access_log.py",
    # Edge authentication: a route with auth runs these per request (a cached token's check,
    # API keys, IP lists); JWKS fetching and forward auth wait on the network and stay out.
    "guardproxy/guards/auth/api_keys.py",
    "guardproxy/guards/auth/guard.py",
    "guardproxy/guards/auth/ip_lists.py",
    "guardproxy/guards/auth/jwt_provider.py",
    "guardproxy/guards/auth/policy.py",
    "guardproxy/guards/body_limit.py",
    "guardproxy/guards/chain.py",
    "guardproxy/guards/client_ip.py",
    "guardproxy/guards/compression.py",
    "guardproxy/guards/concurrency.py",
    "guardproxy/guards/cors.py",
    "guardproxy/guards/hosts.py",
    "guardproxy/guards/https_redirect.py",
    "guardproxy/guards/methods.py",
    "guardproxy/guards/metrics.py",
    "guardproxy/guards/paths.py",
    "guardproxy/guards/request_id.py",
    "guardproxy/guards/security_headers.py",
    "guardproxy/guards/upstream_redirects.py",
    "guardproxy/observability/access_log.py",
    "guardproxy/observability/sink.py",
    "guardproxy/observability/tally.py",
]

# mypy's own configuration (pyproject.toml) is for checking; the build type-checks the compiled
# modules without it (no pydantic plugin, which the build environment does not have).
MYPY_FLAGS = ["--config-file=", "--no-site-packages", "--ignore-missing-imports", "--python-version=3.11"]


def say(message: str) -> None:
    print(f"guardproxy build: {message}", file=sys.stderr)


def python_headers() -> Path:
    return Path(sysconfig.get_path("include")) / "Python.h"


def missing_toolchain() -> str | None:
    """Why a C extension cannot be built here, or None when it can."""
    # The compiler setuptools will call: $CC, or the one this Python was built with.
    command = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "")
    if not command or shutil.which(command[0]) is None:
        return f"no C compiler ({command[0] if command else 'none configured'} not found)"
    headers = python_headers()
    if not headers.is_file():
        return f"no Python headers ({headers} not found; Debian: apt-get install python3-dev)"
    return None


def compile_intended() -> bool:
    """Whether this build compiles; says why not when it does not."""
    if os.environ.get("GUARDPROXY_PURE_PYTHON") == "1":
        say("GUARDPROXY_PURE_PYTHON=1: building pure Python")
        return False
    if any(command in sys.argv for command in ("editable_wheel", "develop")):
        say("an editable install: building pure Python (compiled modules would shadow the sources)")
        return False
    reason = missing_toolchain()
    if reason is not None:
        say(f"{reason}: falling back to pure Python (slower; GUARDPROXY_PURE_PYTHON=1 silences this)")
        return False
    if find_spec("mypyc") is None:
        say("mypyc is not installed (it comes with mypy, see [build-system]): building pure Python")
        return False
    return True


def mypyc_extensions(scratch: Path) -> list[Any]:
    """Type-checks the compiled modules and writes their C sources into `scratch`."""
    from mypyc.build import mypycify  # noqa: PLC0415 - only a compiling build needs mypyc

    say(f"compiling {len(COMPILED_MODULES)} modules with mypyc in {scratch}")
    flags = [*MYPY_FLAGS, f"--cache-dir={scratch / 'mypy-cache'}"]
    return list(
        mypycify(
            [*flags, *(f"src/{module}" for module in COMPILED_MODULES)],
            opt_level="3",
            debug_level="0",
            multi_file=True,
            group_name="guardproxy",
            target_dir=str(scratch / "mypyc"),
        )
    )


class ParallelBuildExt(build_ext):
    """Compiles an extension's C files in parallel: mypyc puts the whole hot path into one
    extension of some forty files, which setuptools would compile one after the other (its
    `parallel` option only builds separate extensions side by side). Halves the install on two
    cores. Uses distutils' compile steps, which setuptools (pinned) keeps as they have long been."""

    def build_extensions(self) -> None:
        compiler: Any = self.compiler

        def compile_sources(  # noqa: PLR0917 - the signature of distutils CCompiler.compile
            sources: list[str],
            output_dir: str | None = None,
            macros: Any = None,
            include_dirs: Any = None,
            debug: bool = False,
            extra_preargs: Any = None,
            extra_postargs: Any = None,
            depends: Any = None,
        ) -> list[str]:
            macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs
            )
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

            def compile_one(obj: str) -> None:
                src, ext = build[obj]
                compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                list(pool.map(compile_one, objects))
            return list(objects)

        compiler.compile = compile_sources
        super().build_extensions()


# The commands that build the package. pip runs this file for metadata and build requirements too
# (egg_info, dist_info): those need no extensions, and mypyc runs only once, when building.
BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "install"}


def main() -> None:
    # Relative to this file, as setuptools wants the C sources' paths, and unique to this build.
    os.chdir(ROOT)
    Path("build").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="guardproxy-", dir="build"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    options: dict[str, Any] = {"build": {"build_base": str(scratch / "build")}}
    extensions: list[Any] = []
    if BUILD_COMMANDS & set(sys.argv[1:]) and compile_intended():
        extensions = mypyc_extensions(scratch)
        options["build_ext"] = {"parallel": os.cpu_count() or 1}
    setup(ext_modules=extensions, options=options, cmdclass={"build_ext": ParallelBuildExt})


# setuptools runs this file as __main__; tests import it for its list and its checks.
if __name__ == "__main__":
    main()
