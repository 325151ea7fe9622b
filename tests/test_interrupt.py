"""Ctrl-C waits until it can interrupt safely: never inside an import or Numba, never swallowed."""

import importlib
import signal
import sys
import time

import pytest

from fastlenet.interrupt import ctrl_c_outside_fragile_code


def test_ctrl_c_during_an_import_lands_after_it(tmp_path, monkeypatch):
    (tmp_path / "slow_to_import.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.2)\nFINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt), ctrl_c_outside_fragile_code():
        importlib.import_module("slow_to_import")
        time.sleep(5)
    assert sys.modules["slow_to_import"].FINISHED
    del sys.modules["slow_to_import"]


def test_ctrl_c_swallowed_by_a_finaliser_is_sent_again():
    class InterruptedWhileFinalised:
        def __del__(self):
            raise KeyboardInterrupt  # what Python's handler does when SIGINT arrives in a __del__

    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), ctrl_c_outside_fragile_code():
        InterruptedWhileFinalised()
        time.sleep(5)
    assert time.perf_counter() - started < 1


def test_handlers_are_restored_and_an_ignored_sigint_stays_ignored():
    hook = sys.unraisablehook
    with ctrl_c_outside_fragile_code():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and sys.unraisablehook is hook
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_outside_fragile_code():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
