"""Unit prices: configured first, then fal's list, asked once and kept."""

from __future__ import annotations

from genrelay.consumer.errors import ProviderError
from genrelay.consumer.provider.fal_platform import Price
from genrelay.consumer.provider.prices import Prices


class PriceList:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.down = False

    async def prices(self, endpoints: list[str]) -> dict[str, Price]:
        self.asked.append(endpoints)
        if self.down:
            raise ProviderError("the price list is unavailable")
        return {
            "a/b": Price("a/b", 0.003, "image", "USD"),
            "c/eur": Price("c/eur", 0.5, "image", "EUR"),
        }


async def test_a_configured_price_wins_and_fals_list_is_asked_once_per_endpoint() -> None:
    source = PriceList()
    prices = Prices(source, {"x/y": 0.01})
    assert await prices.unit_price("x/y") == 0.01
    assert await prices.unit_price("a/b") == 0.003
    assert await prices.unit_price("a/b") == 0.003
    assert source.asked == [["a/b"]]


async def test_an_unknown_price_is_none_never_an_error() -> None:
    source = PriceList()
    source.down = True
    prices = Prices(source, {})
    assert await prices.unit_price("a/b") is None
    # Not asked again at once: a price list that is down is not hammered per job.
    source.down = False
    assert await prices.unit_price("a/b") is None
    assert len(source.asked) == 1
    assert await prices.unit_price("c/eur") is None  # not in USD: no estimate
    assert await Prices(None, {}).unit_price("a/b") is None
