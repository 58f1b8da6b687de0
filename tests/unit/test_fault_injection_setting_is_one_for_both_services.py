"""One fault-injection setting (`METERGATE_<SERVICE>_FAULT=STEP@N`) for metering and rating."""

from __future__ import annotations

import pytest

from metergate.errors import ConfigurationError
from metergate.faults import Fault
from metergate_services.metering.commit import CRASH_POINTS
from metergate_services.metering.settings import MeteringSettings
from metergate_services.rating.consumer import FAULT_ENV, FAULT_STEPS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("variable", "steps"), [("METERGATE_METERING_FAULT", CRASH_POINTS), (FAULT_ENV, FAULT_STEPS)]
)
def test_each_service_reads_step_at_batch_and_names_its_steps_when_wrong(variable, steps):
    fault = Fault(variable, steps, f"{steps[1]}@3")
    assert (fault.step, fault.batch) == (steps[1], 3)
    for bad in ("nowhere@1", f"{steps[0]}", f"{steps[0]}@0", f"{steps[0]}@x"):
        with pytest.raises(ConfigurationError) as raised:
            Fault(variable, steps, bad)
        message = str(raised.value)
        assert variable in message and steps[0] in message and repr(bad) in message


def test_unset_never_fires_and_the_older_metering_pair_still_reads(monkeypatch):
    Fault("METERGATE_METERING_FAULT", CRASH_POINTS, None).at("outputs_sent", 10**6)  # returns
    monkeypatch.setenv("METERGATE_METERING_CRASH_POINT", "changelog_sent")
    monkeypatch.setenv("METERGATE_METERING_CRASH_AFTER_BATCHES", "2")
    assert MeteringSettings().fault_spec == "changelog_sent@2"
    monkeypatch.setenv("METERGATE_METERING_FAULT", "state_written@4")
    assert MeteringSettings().fault_spec == "state_written@4"
