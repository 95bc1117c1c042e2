"""The command line as a newcomer meets it in the first hour (issue 23): a bad
``$REDISFLOW_URL``, ``check`` finding what ``run`` would refuse, closing the terminal, a
second Ctrl-C, ``redisflow server`` with a bad ``--dir`` or a busy port, and the hints
that say how to install what is missing. Real subprocesses, private servers."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.servers import RedisProc
from tests.test_cli import ROOT, env_for, write

APP = """\
from redisflow import Flow

flow = Flow(prefix={ns!r})


@flow.on_queue("{ns}:q")
async def handle(n: int) -> None:
    pass
"""


def run_cli(
    path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m redisflow ARGS`` in ``path`` with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "redisflow", *args],
        cwd=path, env={**env_for(path), **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_a_bad_url_in_the_environment_is_one_line_and_the_command_line_wins(
    tmp_path: Path, redis_server: RedisProc, ns: str
) -> None:
    """``REDISFLOW_URL=localhost:16400`` with a module-level ``Flow()``: one line (no
    traceback) with the right hint; ``--url`` overrides it although ``Flow()`` read the
    variable at import."""
    write(tmp_path, "envapp", APP.format(ns=ns))
    bad = {"REDISFLOW_URL": "localhost:16400"}
    for command in ("run", "check"):
        res = run_cli(tmp_path, command, "envapp", env=bad)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 2
        assert "did you mean redis://localhost:16400?" in res.stderr, res.stderr
        assert "$REDISFLOW_URL" in res.stderr and "--url overrides it" in res.stderr
    res = run_cli(tmp_path, "check", "envapp", "--url", redis_server.url, env=bad)
    assert res.returncode == 0 and res.stdout.startswith("ok:"), res.stdout + res.stderr


def test_every_install_hint_names_what_pip_can_install() -> None:
    """redisflow is not on PyPI, so no hint (README, docs, examples, error messages) says
    ``pip install 'redisflow[...]'``: each names a local checkout or wheel, or a package one
    of the extras really brings; and ``make dist`` builds that wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    brought = {re.split(r"[\[<>=;! ]", req)[0].lower() for reqs in extras.values() for req in reqs}
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").iterdir()]
    files += [*(ROOT / "redisflow").rglob("*.py")]
    found = 0
    for path in files:
        if path.suffix not in (".md", ".py"):
            continue
        text = path.read_text().replace("\n", " ")
        for match in re.finditer(r"pip\s+install\s+([^`)\"#]+?)(?:`|\)|\"|\s\(|\s#|$)", text):
            for arg in shlex.split(match.group(1).replace("'.[", "'x[")):
                if arg.startswith("-") or arg.startswith(("/", ".", "x[", "dist/")):
                    continue
                name = re.split(r"[\[<>=;]", arg)[0].lower()
                assert name in brought, f"{path.name}: pip install {match.group(1)!r}"
                found += 1
    assert found >= 8
    dry = subprocess.run(["make", "-n", "dist"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "pip wheel" in dry.stdout and "dist" in dry.stdout
