# attack: writes 16 MiB files in its trial directory, each under the size limit of one file (1 GiB in all at
#   most): the disk limit is on all of a trial's files together.
# expect: disk_limit
import os
import sys

chunk = b"\1" * (1 << 20)
os.makedirs("evo-bomb-files", exist_ok=True)
for i in range(64):
    with open(f"evo-bomb-files/part-{i:03d}.bin", "wb") as f:
        for _ in range(16):
            f.write(chunk)
sys.exit("EVO-BOMB-NOT-STOPPED: wrote 1 GiB of files")
