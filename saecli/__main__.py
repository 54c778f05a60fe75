"""``python -m saecli``: the same as the ``saecli`` command."""

from saecli.cli import main

main()
