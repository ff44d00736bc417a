import sys

from discretpeer.cli import main

sys.exit(main())
