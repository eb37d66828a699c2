"""`python -m mechdiff` (and `torchrun -m mechdiff`) runs the CLI."""

from mechdiff.cli import main

main()
