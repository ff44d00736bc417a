"""``python -m discretpeer.cli``: the same as the ``discretpeer`` command (one entry point)."""

import sys

from discretpeer.entry import main

sys.exit(main())
