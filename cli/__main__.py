"""``python -m hpatk.cli ...``: the ``hpatk`` command (what ``torchrun -m`` runs)."""

from hpatk.cli.main import main

if __name__ == "__main__":
    main()
