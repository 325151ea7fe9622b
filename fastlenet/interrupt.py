"""Ctrl-C that never lands inside an import or a compile.

Python raises KeyboardInterrupt wherever the main thread happens to be. In some
places that goes wrong, all seen from an early Ctrl-C of `fastlenet train`:
- raised in a weakref callback, a `__del__` or a ctypes callback (importlib's
  module locks, llvmlite's objects) it is printed as "Exception ignored" and the
  command runs on;
- raised while a C extension initialises, it leaves the module half made, and
  the next import fails with "cannot load module more than once per process";
- raised inside llvmlite while Numba loads a kernel, it can end the process
  with "double free detected".
So while the main thread is in importlib, llvmlite or Numba, a Ctrl-C waits:
the signal is sent again every RETRY_S until it lands outside them (at most one
kernel's compile later).
"""

import os
import signal
import sys
import threading
from contextlib import contextmanager

RETRY_S = 0.02
FRAGILE = {"importlib", "llvmlite", "numba"}  # top-level packages a KeyboardInterrupt must not land in


def in_fragile_code(frame):
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] in FRAGILE:
            return True
        frame = frame.f_back
    return False


def send_again(signum=signal.SIGINT):
    retry = threading.Timer(RETRY_S, os.kill, (os.getpid(), signum))
    retry.daemon = True
    retry.start()


def interrupt_outside_fragile_code(signum, frame):
    """SIGINT's handler: KeyboardInterrupt as usual, unless the main thread is in fragile code."""
    if in_fragile_code(frame):
        send_again(signum)
    else:
        raise KeyboardInterrupt


@contextmanager
def ctrl_c_outside_fragile_code():
    """Within: SIGINT interrupts like Python's own handler, but never inside importlib,
    llvmlite or Numba, and a KeyboardInterrupt that a callback swallowed is sent again.
    A SIGINT that is ignored (a background job) or handled by someone else stays so;
    only the main thread can set a handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    previous_hook = sys.unraisablehook

    def unraisable(info):
        if isinstance(info.exc_value, KeyboardInterrupt):
            send_again()
        else:
            previous_hook(info)

    sys.unraisablehook = unraisable
    signal.signal(signal.SIGINT, interrupt_outside_fragile_code)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook
