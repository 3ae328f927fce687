"""``python -m privlab`` is the ``privlab`` command."""

from privlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
