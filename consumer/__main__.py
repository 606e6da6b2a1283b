"""`python -m genrelay.consumer`: one relay replica, configured by GENRELAY_* variables."""

import asyncio

from genrelay.consumer.service.process import run_relay

raise SystemExit(asyncio.run(run_relay()))
