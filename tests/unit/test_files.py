from __future__ import annotations

import stat
from pathlib import Path

from opendepot.files import write_private


def test_private_files_are_0600_even_over_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "secret"
    write_private(path, "one")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "one"
    path.chmod(0o644)
    write_private(path, b"two")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"two"
