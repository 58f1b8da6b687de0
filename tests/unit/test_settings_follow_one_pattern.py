"""Every service's settings follow one pattern: a shared log level, group ids with the topic prefix
in front, durations in seconds with `_s` in the name, renamed settings still read with one line."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from pydantic import ValidationError

from metergate.entitlements.settings import EntitlementsSettings
from metergate.settings import KafkaSettings, consumer_group
from metergate_services.metering.settings import MeteringSettings
from metergate_services.rating.settings import RatingSettings

pytestmark = pytest.mark.unit

SERVICES = (MeteringSettings, RatingSettings)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("METERGATE_")]:
        monkeypatch.delenv(name)


def test_one_log_level_reaches_every_service(monkeypatch):
    assert {settings().log.log_level for settings in SERVICES} == {"WARNING"}
    monkeypatch.setenv("METERGATE_LOG_LEVEL", "info")
    assert {settings().log.log_level for settings in SERVICES} == {"INFO"}


def test_a_wrong_log_level_is_named_with_what_would_be_right(monkeypatch):
    monkeypatch.setenv("METERGATE_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError) as raised:
        RatingSettings()
    assert "METERGATE_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'" in str(
        raised.value
    )


def test_group_ids_are_the_topic_prefix_then_the_service_name(monkeypatch):
    monkeypatch.setenv("METERGATE_KAFKA_TOPIC_PREFIX", "acme.")
    assert consumer_group(KafkaSettings(), "x") == "acme.x"
    assert MeteringSettings().group_id == "acme.metergate-metering"
    assert MeteringSettings().changelog_topic == "acme.metergate-metering-state-changelog"
    assert RatingSettings().group_id == "acme.metergate-rating"
    monkeypatch.setenv("METERGATE_RATING_APP_ID", "rating-eu")
    assert RatingSettings().group_id == "acme.rating-eu"
    monkeypatch.setenv("METERGATE_RATING_GROUP_ID", "legacy-group")  # the whole id, verbatim
    assert RatingSettings().group_id == "legacy-group"


def test_every_duration_is_in_seconds_with_the_unit_in_its_name():
    for settings in (*SERVICES, EntitlementsSettings):
        for name, field in settings.model_fields.items():
            assert field.annotation is not timedelta, (
                f"{settings.__name__}.{name}: give it in seconds, as {name}_s"
            )
            assert not name.endswith("_ms"), f"{settings.__name__}.{name}: durations are in seconds (_s)"


def test_renamed_settings_are_still_read_with_one_line_each(monkeypatch, caplog):
    monkeypatch.setenv("METERGATE_METERING_DEDUP_WINDOW", "P2D")
    monkeypatch.setenv("METERGATE_METERING_FUTURE_SKEW", "90")
    monkeypatch.setenv("METERGATE_RATING_SESSION_TIMEOUT_MS", "1500")
    with caplog.at_level(logging.WARNING, logger="metergate.settings"):
        metering, rating = MeteringSettings(), RatingSettings()
    assert metering.dedup_window_s == 2 * 86_400 and metering.dedup_window == timedelta(days=2)
    assert metering.future_skew_s == 90
    assert metering.late_grace_s == 86_400  # not given: the default
    assert rating.session_timeout_s == 1.5 and rating.session_timeout_ms == 1500
    assert caplog.messages == [
        "METERGATE_METERING_DEDUP_WINDOW is deprecated: set METERGATE_METERING_DEDUP_WINDOW_S=172800.0 instead",
        "METERGATE_METERING_FUTURE_SKEW is deprecated: set METERGATE_METERING_FUTURE_SKEW_S=90.0 instead",
        "METERGATE_RATING_SESSION_TIMEOUT_MS is deprecated: set METERGATE_RATING_SESSION_TIMEOUT_S=1.5 instead",
    ]


def test_the_new_name_wins_over_the_old_one(monkeypatch, caplog):
    monkeypatch.setenv("METERGATE_RATING_SESSION_TIMEOUT_MS", "1500")
    monkeypatch.setenv("METERGATE_RATING_SESSION_TIMEOUT_S", "4")
    with caplog.at_level(logging.WARNING, logger="metergate.settings"):
        assert RatingSettings().session_timeout_s == 4
    assert caplog.messages == [
        "METERGATE_RATING_SESSION_TIMEOUT_MS is deprecated and ignored: METERGATE_RATING_SESSION_TIMEOUT_S is set"
    ]
