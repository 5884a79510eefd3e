"""rayeffi's command line as a script, for ``ray submit`` (which runs ``python SCRIPT ARGS`` on the head).

    ray submit cluster/local.yaml cluster/rayeffi_job.py -- \
        run ~/rayeffi/examples/quickstart.yaml --address auto --out /mnt/shared/runs/quickstart
"""

import sys

from rayeffi.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
