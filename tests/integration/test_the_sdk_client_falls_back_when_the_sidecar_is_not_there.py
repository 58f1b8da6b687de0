"""The SDK client answers with the configured fallback when the sidecar does not answer (a port
nobody listens on: connection refused), and raises when no rule covers the feature."""

from __future__ import annotations

import pytest

from metergate.domain.entitlements import Source
from metergate.sdk import EntitlementsClient, SidecarUnavailable
from tests.integration.entitlements_support import free_port

pytestmark = pytest.mark.integration


def test_fallback_when_the_sidecar_is_down():
    url = f"http://127.0.0.1:{free_port()}"
    with EntitlementsClient(
        url, api_key="mgk_x_y", timeout_s=0.5, fallback={"sso": True, "*": False}
    ) as client:
        sso = client.check("acme", "sso")
        assert (sso.has_access, sso.source, sso.stale) == (True, Source.FALLBACK, True)
        other = client.check("acme", "api_calls", 3)
        assert (other.has_access, other.source, str(other.requested_units)) == (False, Source.FALLBACK, "3")
    with (
        EntitlementsClient(url, api_key="mgk_x_y", timeout_s=0.5) as client,
        pytest.raises(SidecarUnavailable),
    ):
        client.check("acme", "sso")
