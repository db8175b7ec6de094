# attack: writes a file in /tmp, 1 MiB at a time (1 GiB at most): in the sandbox /tmp is a tmpfs, that is
#   RAM, so it must have a size; outside the sandbox the file is the host's, held by the size limit of a
#   file. It removes the file when a write fails.
# expect: disk_limit
import os
import sys

path = f"/tmp/evo-attack-bomb-{os.getpid()}.bin"
chunk = b"\2" * (1 << 20)
try:
    with open(path, "wb") as f:
        for _ in range(1024):
            f.write(chunk)
finally:
    os.unlink(path)
sys.exit("EVO-BOMB-NOT-STOPPED: wrote 1 GiB into /tmp")
