"""``python -m fewlabel``: the ``fewlabel`` command."""
from fewlabel.cli import main

main()
