"""commands/options.py: once a command's service has closed, a late SIGINT/SIGTERM must not end the process."""
from __future__ import annotations

import subprocess
import sys

# The interpreter's own exit resets Python-handled signals to SIG_DFL (CPython's _PySignal_Fini); a signal that
# lands after that kills the process. This child checks what the handlers are once the atexit functions ran,
# i.e. what the last moments of the process see, and then signals itself there.
_CHILD = """
import atexit, os, signal
from edgepipe.commands.options import closed_to_signals
closed_to_signals()
os.kill(os.getpid(), signal.SIGINT)          # while the command writes its report: noted
atexit._run_exitfuncs()
print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
os.kill(os.getpid(), signal.SIGINT)          # in the interpreter's last moments: ignored
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_a_signal_after_the_clean_stop_is_noted_then_ignored_at_exit():
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
    assert "signal 2: already stopped, finishing" in proc.stderr and "Traceback" not in proc.stderr
