"""``python -m discretpeer``: the same as the ``discretpeer`` command."""

import sys

from discretpeer.cli import main

sys.exit(main())
