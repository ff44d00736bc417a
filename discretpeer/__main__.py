"""``python -m discretpeer``: the same as the ``discretpeer`` command."""

import sys

from discretpeer.entry import main

sys.exit(main())
