"""``python -m medseg``: the ``medseg`` command where its console script is not on PATH
(a service's virtual environment that is not activated)."""

from medseg.cli import main

if __name__ == "__main__":
    main()
