from __future__ import annotations

import pytest

from opendepot.projects.hardware import ALL, DEFAULT, Hardware
from opendepot.projects.policy import HARDWARE_SIZES


def test_a_size_reads_and_prints_as_stored() -> None:
    assert Hardware.parse("4x8") == Hardware(cpus=4, memory_gb=8)
    assert [str(h) for h in ALL] == list(HARDWARE_SIZES)
    assert str(DEFAULT) == "16x32"
    with pytest.raises(ValueError, match="hardware size"):
        Hardware.parse("large")


def test_minutes_bill_by_cpus_against_the_default() -> None:
    assert DEFAULT.billing_weight == 1
    assert Hardware.parse("4x4").billing_weight == 0.25
    assert Hardware.parse("32x64").billing_weight == 2
