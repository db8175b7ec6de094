# attack: allocates 64 MiB at a time and writes it (resident, not just reserved), 3 GiB at most.
# expect: memory_limit
import sys

import numpy as np

held = []
while len(held) < 48:
    held.append(np.ones(64 * 2**20, dtype=np.uint8))
sys.exit("EVO-BOMB-NOT-STOPPED: held 3 GiB")
