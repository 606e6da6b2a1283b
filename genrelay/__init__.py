"""genrelay: a reliable Kafka front door for paid generative inference."""

__version__ = "0.1.0"
