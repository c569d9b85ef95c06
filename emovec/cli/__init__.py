"""The `emovec` command line: a thin layer over the Python API.

`main` is the click group; the commands live in `main` (runs, analyses, reports),
`interactive` (score, generate, export, monitor, serve) and `experiments`.
"""

from . import experiments, interactive
from .main import main

__all__ = ["experiments", "interactive", "main"]
