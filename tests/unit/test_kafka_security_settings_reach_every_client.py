"""Every Kafka client metergate builds honours the shared security settings (METERGATE_KAFKA_*)."""

from __future__ import annotations

import ssl

import faust
import pytest

from metergate.kafka.faust_broker import faust_broker_kwargs
from metergate.settings import KafkaSettings

pytestmark = pytest.mark.unit

SASL = {
    "bootstrap": "k1:9093,k2:9093",
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "meter",
    "sasl_password": "s3cret",
}
LIBRDKAFKA = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "meter",
    "sasl.password": "s3cret",
}


def test_plain_broker_gets_no_credentials():
    assert faust_broker_kwargs(KafkaSettings(bootstrap="localhost:9092")) == {
        "broker": "kafka://localhost:9092"
    }


def test_sasl_ssl_settings_become_faust_sasl_credentials_over_tls():
    kwargs = faust_broker_kwargs(KafkaSettings(**SASL))
    assert kwargs["broker"] == "kafka://k1:9093;kafka://k2:9093"
    credentials = kwargs["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "meter",
        "s3cret",
        "SCRAM-SHA-512",
    )
    assert credentials.protocol.value == "SASL_SSL" and isinstance(credentials.ssl_context, ssl.SSLContext)


def test_sasl_plaintext_is_assumed_when_only_sasl_settings_are_given():
    kwargs = faust_broker_kwargs(KafkaSettings(bootstrap="k:9092", sasl_username="u", sasl_password="p"))
    credentials = kwargs["broker_credentials"]
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_PLAINTEXT", "PLAIN")
    assert credentials.ssl_context is None


def test_ssl_only_gets_a_tls_context():
    kwargs = faust_broker_kwargs(KafkaSettings(bootstrap="k:9093", security_protocol="SSL"))
    assert isinstance(kwargs["broker_credentials"], faust.SSLCredentials)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"security_protocol": "TLS"},
            "METERGATE_KAFKA_SECURITY_PROTOCOL: expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "GSSAPI",
                "sasl_username": "u",
                "sasl_password": "p",
            },
            "METERGATE_KAFKA_SASL_MECHANISM: expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, got 'GSSAPI'",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u"},
            "METERGATE_KAFKA_SASL_USERNAME and METERGATE_KAFKA_SASL_PASSWORD: both are needed for SASL_SSL",
        ),
    ],
)
def test_settings_faust_cannot_use_are_named(settings, message):
    with pytest.raises(ValueError) as error:
        faust_broker_kwargs(KafkaSettings(bootstrap="k:9092", **settings))
    assert str(error.value) == message


def test_librdkafka_clients_get_the_same_settings():
    assert KafkaSettings(**SASL).client_config() == {"bootstrap.servers": "k1:9093,k2:9093", **LIBRDKAFKA}


def test_the_entitlement_state_follows_and_reports_with_the_security_settings(tmp_path):
    from metergate.entitlements.service import Entitlements
    from metergate.entitlements.settings import EntitlementsSettings

    settings = EntitlementsSettings(kafka=KafkaSettings(**SASL), checkpoint_path=None)
    service = Entitlements(settings, start=False)
    expected = {"bootstrap.servers": "k1:9093,k2:9093", **LIBRDKAFKA}
    assert service._client_config == expected  # the follower's and the producer's configuration
