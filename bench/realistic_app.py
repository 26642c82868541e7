"""The realistic application of bench/ci.py and bench/build.py, and what both need around it.

A C program of a few hundred generated source files, built in three stages FROM a Debian image made here
(`opendepot images seed`): `deps` installs Debian packages from the Debian mirror in a RUN step (apt's
cache and lists in cache mounts, as Docker's own docs advise), `build` compiles with make, and the final
stage copies the binary and runs it. The object files live in a cache mount, so make recompiles only what
changed where a cache persists (the usual incremental build). Its changes: one line of one source file
(`small_change`), a new revision of the package list (`dependency_change`), nothing (`no change`)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
DEPOT_CLI = ROOT / "tests/e2e/node/node_modules/@depot/cli-linux-x64/bin/depot"
ROOTFS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opendepot-bench"
PACKAGES = ("gcc", "libc6-dev", "make")

DOCKERFILE = """\
FROM {base} AS deps
COPY packages.txt /tmp/packages.txt
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \\
    apt-get update -q && \\
    apt-get install -q -y --no-install-recommends $(grep -v '^#' /tmp/packages.txt)

FROM deps AS build
WORKDIR /src
COPY Makefile ./
COPY src/ src/
RUN --mount=type=cache,target=/src/obj make -j"$(nproc)" app

FROM {base}
COPY --from=build /src/app /usr/local/bin/app
RUN /usr/local/bin/app
"""

MAKEFILE = """\
SOURCES := $(wildcard src/*.c)
OBJECTS := $(SOURCES:src/%.c=obj/%.o)
CFLAGS := -O2 -Wall

app: $(OBJECTS)
\t$(CC) -o $@ $(OBJECTS)

obj/%.o: src/%.c
\t$(CC) $(CFLAGS) -c -o $@ $<
"""


def module_source(i: int, revision: int = 0) -> str:
    """One translation unit: a little arithmetic worth compiling, and the revision as a constant."""
    body = "\n".join(
        f"static long step{i}_{k}(long x) {{ return (x * {k + 3} + {i}) % 1000003 ^ (x >> {k % 7}); }}"
        for k in range(24)
    )
    chain = " ".join(f"x = step{i}_{k}(x);" for k in range(24))
    return f"/* module {i} */\n{body}\nlong module{i}(long x) {{ {chain} return x + {revision}; }}\n"


def write_app(directory: Path, base: str, modules: int = 300) -> Path:
    source = directory / "src"
    source.mkdir(parents=True, exist_ok=True)
    for i in range(modules):
        (source / f"module{i}.c").write_text(module_source(i))
    declarations = "\n".join(f"long module{i}(long x);" for i in range(modules))
    calls = " ".join(f"x = module{i}(x);" for i in range(modules))
    (source / "main.c").write_text(
        f"#include <stdio.h>\n{declarations}\nint main(void) {{ long x = 1; {calls} "
        f'printf("app result %ld\\n", x); return 0; }}\n'
    )
    (directory / "Makefile").write_text(MAKEFILE)
    (directory / "packages.txt").write_text("# revision 0\n" + "\n".join(PACKAGES) + "\n")
    (directory / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    return directory


def small_change(directory: Path, revision: int) -> None:
    """A one-line source change: one module's constant."""
    (directory / "src" / "module7.c").write_text(module_source(7, revision))


def dependency_change(directory: Path, revision: int) -> None:
    """The package list changes (a new revision line), so the apt step and all after it run again."""
    (directory / "packages.txt").write_text(f"# revision {revision}\n" + "\n".join(PACKAGES) + "\n")


def docker_config(directory: Path, registry: str, token: str) -> Path:
    """A Docker config with the registry's credentials: how depot and buildctl hand them to BuildKit."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(f"x-token:{token}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry: {"auth": secret}}}))
    return directory


def debian_rootfs(suite: str = "bookworm") -> Path:
    """The Debian root filesystem tarball, made once with mmdebstrap and kept in ~/.cache/opendepot-bench."""
    from opendepot.registry.seed import DEFAULT_MIRROR
    from opendepot.registry.seed import debian_rootfs as make

    cached = ROOTFS_CACHE / f"{suite}.tar"
    if not cached.exists():
        ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        print(f"making a Debian {suite} root filesystem with mmdebstrap (once) ...", flush=True)
        make(suite, DEFAULT_MIRROR, partial)
        partial.rename(cached)
    return cached


def seed_base(api_url: str, token: str, project: str, registry: str) -> str:
    """`opendepot images seed` into the project: the FROM image of the realistic app."""
    env = {**os.environ, "DEPOT_API_URL": api_url, "DEPOT_TOKEN": token}
    command = [str(VENV_BIN / "opendepot"), "images", "seed", project, "--registry", registry, "--insecure"]
    command += ["--rootfs", str(debian_rootfs()), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"opendepot images seed failed: {result.stderr}")
    return str(json.loads(result.stdout)["image"])


def timed(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900) -> float:
    start = time.perf_counter()
    result = subprocess.run(list(args), capture_output=True, text=True, env=env, check=False, timeout=timeout)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {result.stdout[-3000:]} {result.stderr[-3000:]}")
    return elapsed


def depot_env(api_url: str, token: str, docker_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DEPOT_API_URL": api_url,
        "DEPOT_TOKEN": token,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
        "DEPOT_ERROR_TELEMETRY": "0",
        "DEPOT_NO_SUMMARY_LINK": "1",
        "DOCKER_CONFIG": str(docker_dir),
    }


def depot_build(project: str, context: Path, *extra: str) -> list[str]:
    return [str(DEPOT_CLI), "build", "--project", project, "--progress", "plain", *extra, str(context)]


def spread(values: Sequence[float]) -> str:
    """min/median/max in seconds."""
    return f"{min(values):6.2f} / {statistics.median(values):6.2f} / {max(values):6.2f} s"


def ratio_spread(numerators: Sequence[float], denominators: Sequence[float]) -> str:
    """The ratio of medians, and its range over the runs paired as measured."""
    pairs = [n / d for n, d in zip(numerators, denominators, strict=True)]
    median = statistics.median(numerators) / statistics.median(denominators)
    return f"{median:5.2f}x (runs {min(pairs):.2f}-{max(pairs):.2f})"


def alternate(runs: int, first: Callable[[int], None], second: Callable[[int], None]) -> None:
    """first, second, second, first, ...: neither side is always the one that runs after the other."""
    for i in range(runs):
        order = (first, second) if i % 2 == 0 else (second, first)
        for step in order:
            step(i)


def machine_note() -> str:
    """What the figures were taken on: the core count and the load (other work on the machine skews them)."""
    one, five, _ = os.getloadavg()
    return (
        f"{os.cpu_count()} cores, load average {one:.2f} (1 min) / {five:.2f} (5 min) at the end; runs "
        "alternate and min/median/max are given"
    )


def tool(name: str) -> str | None:
    beside = VENV_BIN / name
    return str(beside) if beside.exists() else shutil.which(name)
