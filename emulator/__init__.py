"""A fal-compatible queue emulator: fal's queue API, signed webhooks, real output files and
knobs for every failure genrelay must survive (see `settings.EmulatorSettings`)."""

from genrelay.emulator.core import Emulator
from genrelay.emulator.faults import ArmRequest
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings
from genrelay.emulator.supervisor import EmulatorCrashedError

__all__ = ["ArmRequest", "Emulator", "EmulatorCrashedError", "EmulatorServer", "EmulatorSettings"]
