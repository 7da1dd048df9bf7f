"""`python -m kling_batch` runs the command line."""

from kling_batch.cli import main

main()
