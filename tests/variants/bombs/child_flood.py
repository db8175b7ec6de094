# attack: a child process outside Python (`yes`, cut at 512 MiB by `head`) floods the stderr it inherited
#   from the trial, while the trial itself waits quietly.
# expect: log_flood
import subprocess
import sys

subprocess.run("yes 'flood from a child process' | head -c 536870912 1>&2", shell=True)
sys.exit("EVO-BOMB-NOT-STOPPED: a child printed 512 MiB")
