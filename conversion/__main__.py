import sys

from .cli import main

sys.exit(main(prog="python -m lion_hf.conversion"))
