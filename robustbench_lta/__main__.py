"""``python -m robustbench_lta`` runs the CLI (``torchrun ... -m robustbench_lta train CONFIG`` needs it)."""

from .cli import main

if __name__ == "__main__":
    main()
