"""Read what is on a topic, the way a test wants it: everything, to its true end.

The reader is the project's one (`metergate.kafka.follow.read_topic`, which says how the true end is
found); it is named here for the tests that import it.
"""

from __future__ import annotations

from metergate.kafka.follow import read_topic

__all__ = ["read_topic"]
