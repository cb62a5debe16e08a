"""SIGHUP before ``publisher run`` can reload: held, neither fatal nor lost.

Python leaves SIGHUP at the system's default, which ends the process (status 129), and the
service installs its reload handler only once it has loaded the config, opened the state and
started its server. A ``systemctl reload`` in that time would kill it. So ``publisher run``
holds SIGHUP from its first moment (the entry point, before the command line module is even
imported; again, certainly, once the command line is parsed): a SIGHUP that comes is
remembered, and the service applies it as a reload once it has started (``take``). Every
other command keeps the default: a hang-up ends a ``publisher build`` as it should.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType

# The group's options that take a value (``-c FILE``): what comes next is not the command.
_VALUED = ("-c", "--config")

_held = False
_pending = False


def _remember(_signum: int, _frame: FrameType | None) -> None:
    global _pending
    _pending = True


def hold() -> None:
    """From now on a SIGHUP is remembered instead of ending the process."""
    global _held
    if not _held:
        signal.signal(signal.SIGHUP, _remember)
        _held = True


def release() -> None:
    """SIGHUP back to its default (the command is not ``run`` after all)."""
    global _held, _pending
    if _held:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        _held = _pending = False


def take() -> bool:
    """Whether a SIGHUP came while held; the caller has installed its own handler."""
    global _held, _pending
    came = _pending
    _held = _pending = False
    return came


def command_of(args: Sequence[str]) -> str | None:
    """The command a command line names (``publisher -c FILE run`` -> "run"), read as the
    group reads its options; None when there is none."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--":
            return None
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def hold_for_run(args: Sequence[str]) -> None:
    if command_of(args) == "run":
        hold()
