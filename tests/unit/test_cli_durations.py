"""`opendepot tokens create --expires-in`: a bad duration is a clear error naming the option, never a
traceback (a "²" passed str.isdigit() and then failed int(); a huge number overflowed timedelta)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opendepot.cli.tokens import parse_duration
from opendepot.errors import InvalidArgument


def test_durations() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90d") == timedelta(days=90)


@pytest.mark.parametrize("text", ["", "d", "0d", "-1d", "²d", "①h", "1.5h", "1w", "9999999999999d", " 1d"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_duration(text)
    assert refused.value.field == "--expires-in"
