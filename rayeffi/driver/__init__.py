"""The driver: the process that reads a recipe, checks it, starts (or joins) Ray and runs
the stages in order; never a worker.

- :mod:`.run`        ``run_recipe`` and the one preflight (``preflight``) that ``run``,
                     ``validate`` and the Python API share
- :mod:`.plan`       ``rayeffi validate``: the checks and the plan, no worker started
- :mod:`.resume`     ``--resume``: what an earlier run in the same directory finished
- :mod:`.storage`    where Ray Train persists checkpoints (a path or a pyarrow URI)
- :mod:`.supervise`  the watchdog beside a private Ray (a process of its own)

This file imports nothing, so ``rayeffi.driver.supervise`` loads without the rest.
"""
