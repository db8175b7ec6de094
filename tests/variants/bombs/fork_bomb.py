# attack: a fork bomb. Every process forks two more, each trying to leave for a session of its own (out of
#   reach of a kill of the trial's process group), to a depth of 11, then becomes `sleep 60` (named
#   evo-bomb-sleep): 4,095 processes at most, so that a failure to contain it cannot take the machine down.
# expect: process_limit
import os
import sys
import time


def bomb(depth):
    for _ in range(2):
        if depth > 0 and os.fork() == 0:
            try:
                os.setsid()
            except OSError:
                pass  # refused: stay in the trial's group
            bomb(depth - 1)
            os.execv("/bin/sleep", ["evo-bomb-sleep", "60"])


bomb(11)
time.sleep(30)
sys.exit("EVO-BOMB-NOT-STOPPED: 4,095 processes")
