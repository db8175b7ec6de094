# attack: writes one file in its trial directory, 1 MiB of zeros at a time (written, not sparse; 1 GiB at
#   most): the largest file a trial may write is the kernel's RLIMIT_FSIZE.
# expect: disk_limit
import sys

chunk = b"\0" * (1 << 20)
with open("evo-bomb-huge.bin", "wb") as f:
    for _ in range(1024):
        f.write(chunk)
sys.exit("EVO-BOMB-NOT-STOPPED: wrote a 1 GiB file")
