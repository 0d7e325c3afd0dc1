import sys

from autodeco.cli import main

sys.exit(main())
