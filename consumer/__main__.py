"""`python -m genrelay.consumer`: one relay replica, configured by GENRELAY_* variables."""

from genrelay.consumer.service.process import serve

raise SystemExit(serve())
