"""`python -m pneumonia.cli`: the `pneumonia` command, for tests and environments without the
console script on PATH."""

from pneumonia.cli import main

main()
