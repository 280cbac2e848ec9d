"""`python -m compress`: the CLI, and what torchrun starts on every rank (`torchrun ... -m compress run`)."""

import os
import sys

from compress.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun rank leaves without the interpreter's teardown: the run is over and its files are
    # written, but Gloo's threads, torn down with the interpreter, could still abort it (SIGABRT,
    # "terminate called without an active exception") even after destroy_process_group().
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
sys.exit(code)
