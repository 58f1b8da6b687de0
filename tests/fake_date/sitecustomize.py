# Run the suite on another date (not imported by the tests): every Python process started with this
# directory on PYTHONPATH and FAKE_NOW set sees the wall clock moved by one offset (fixed by the first
# process, inherited by its children through FAKE_OFFSET_S), ticking. Broker and PostgreSQL keep theirs.
import os
import time

_when = os.environ.get("FAKE_NOW")
if _when:
    from datetime import datetime

    import time_machine

    real = time.time()
    offset = os.environ.get("FAKE_OFFSET_S")
    if offset is None:
        offset = str(datetime.fromisoformat(_when.replace("Z", "+00:00")).timestamp() - real)
        os.environ["FAKE_OFFSET_S"] = offset
    time_machine.travel(real + float(offset), tick=True).start()
