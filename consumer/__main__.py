"""`python -m genrelay.consumer …`: the same as the `genrelay` command."""

from genrelay.consumer.cli import main

raise SystemExit(main())
