"""``python -m medseg.cli``: the same entry point as the ``medseg`` console script.

Needed where the console script cannot be used, e.g. ``torchrun -m medseg.cli train ...``
(torchrun starts each rank as ``python -m MODULE``).
"""

from medseg.cli import main

if __name__ == "__main__":
    main()
