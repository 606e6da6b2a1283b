"""`genrelay audit`: proof from the provider's own records that each key was paid for once."""
