# attack: prints 1 KiB lines without pause to its stdout (512 MiB at most): without a cap on the
#   captured output, the disk under the trial directory fills at the speed of a pipe.
# expect: log_flood
import sys

line = "flood " * 170 + "\n"
for _ in range(512 * 1024):
    sys.stdout.write(line)
sys.exit("EVO-BOMB-NOT-STOPPED: printed 512 MiB")
