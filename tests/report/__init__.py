"""Tests of saecli.report, one module per module of the package (a package, so that their names
cannot clash with the tests at the root, e.g. tests/test_cli.py)."""
