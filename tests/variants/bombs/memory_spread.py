# attack: spreads its memory over 8 forked processes of 384 MiB each (3 GiB in all at most), each far under
#   any limit on one process: the memory limit is on a trial's processes together.
# expect: memory_limit
import os
import sys
import time

import numpy as np

for _ in range(8):
    if os.fork() == 0:
        held = np.ones(384 * 2**20, dtype=np.uint8)
        time.sleep(60)
        os._exit(0)
time.sleep(30)
sys.exit("EVO-BOMB-NOT-STOPPED: 8 processes held 3 GiB")
