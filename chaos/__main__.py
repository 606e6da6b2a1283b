"""`python -m genrelay.chaos` is `genrelay chaos`."""

import argparse
import sys

from genrelay.chaos.cli import add_arguments, main

parser = argparse.ArgumentParser(prog="genrelay chaos")
add_arguments(parser)
sys.exit(main(parser.parse_args()))
