"""``python -m medseg``: the command-line interface (torchrun's ``-m medseg`` needs this)."""

from medseg.cli import main

main()
