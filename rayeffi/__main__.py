import sys

from rayeffi.cli import main

sys.exit(main())
