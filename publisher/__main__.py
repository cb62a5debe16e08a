"""``publisher`` and ``python -m publisher``: the command line.

Entered here, not in ``publisher.cli``, so that ``publisher run`` holds SIGHUP before the
command line's modules are imported (``publisher.hangup``).
"""

import sys

from publisher.hangup import hold_for_run


def main() -> None:
    hold_for_run(sys.argv[1:])
    from publisher.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
