"""`python -m genrelay.emulator`: run the emulator standalone (see cli.py)."""

from genrelay.emulator.cli import main

raise SystemExit(main())
