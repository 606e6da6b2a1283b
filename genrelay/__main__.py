"""`python -m genrelay …`: the same as the `genrelay` command."""

from genrelay.cli import main

raise SystemExit(main())
