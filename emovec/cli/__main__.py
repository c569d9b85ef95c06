"""`python -m emovec.cli`."""

from .main import main

main()
