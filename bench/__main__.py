"""`python -m genrelay.bench …`: the same as `genrelay bench …`."""

import argparse

from genrelay.bench import cli

parser = argparse.ArgumentParser(
    prog="genrelay bench",
    description=cli.__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
cli.add_arguments(parser)
raise SystemExit(cli.main(parser.parse_args()))
