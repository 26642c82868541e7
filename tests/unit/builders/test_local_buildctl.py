"""The local backend's questions to a builder go through `buildctl` at its socket: a stand-in buildctl (a
shell script beside the stand-in buildkitd, where the backend looks first) answers, hangs or is missing."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from opendepot.builders.local import LocalBuildkitd
from opendepot.datadir import DataDir
from opendepot.ids import new_id

PROJECT = new_id()


def backend(tmp_path: Path, script: str | None) -> LocalBuildkitd:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    if script is not None:
        buildctl = bin_dir / "buildctl"
        buildctl.write_text("#!/bin/sh\n" + script)
        buildctl.chmod(buildctl.stat().st_mode | stat.S_IXUSR)
    return LocalBuildkitd(str(bin_dir / "buildkitd"), DataDir(tmp_path / "data"))


def test_disk_usage_sums_what_buildctl_du_reports(tmp_path: Path) -> None:
    records = '[{"id": "a", "size": 1000}, {"id": "b", "size": 234}]'
    local = backend(tmp_path, f"echo \"$@\" > {tmp_path}/args\necho '{records}'\n")
    assert asyncio.run(local.disk_usage(PROJECT, "amd64")) == 1234
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["--addr", f"unix://{local.socket_path(PROJECT, 'amd64')}"]
    assert args[2:] == ["du", "--format", "{{json", ".}}"]


def test_a_failing_or_missing_buildctl_cannot_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert asyncio.run(backend(tmp_path / "a", "exit 1\n").disk_usage(PROJECT, "amd64")) is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nor on PATH
    missing = backend(tmp_path / "b", None)
    assert asyncio.run(missing.disk_usage(PROJECT, "amd64")) is None
    # A probe that cannot run cannot tell a wedged builder: it must not have one restarted on a guess.
    assert asyncio.run(missing.responsive(PROJECT, "amd64", 1.0)) is True


@pytest.mark.parametrize("script, answers", [("exit 0\n", True), ("exit 3\n", False)])
def test_responsive_is_whether_buildctl_answered(tmp_path: Path, script: str, answers: bool) -> None:
    assert asyncio.run(backend(tmp_path, script).responsive(PROJECT, "amd64", 5.0)) is answers


def test_a_buildctl_that_hangs_is_killed_and_counts_as_no_answer(tmp_path: Path) -> None:
    local = backend(tmp_path, f"echo $$ > {tmp_path}/pid\nexec sleep 30\n")
    assert asyncio.run(local.responsive(PROJECT, "amd64", 0.5)) is False
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
