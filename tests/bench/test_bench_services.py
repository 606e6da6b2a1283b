"""The bench's emulator processes: each is found where it says it listens, even when an
earlier one with the same name wrote its address to the same log."""

from __future__ import annotations

from pathlib import Path

import httpx

from genrelay.bench.services import EmulatorProcess


async def test_a_second_emulator_of_the_same_name_is_found_at_its_own_address(
    tmp_path: Path,
) -> None:
    async with EmulatorProcess(tmp_path, "twice", run_latency="fixed:0") as first:
        earlier = first.base_url
    async with EmulatorProcess(tmp_path, "twice", run_latency="fixed:0") as second:
        assert second.base_url != earlier
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(second.jwks_url)
        assert response.status_code == 200
    assert (tmp_path / "twice.log").read_text().count("http://127.0.0.1:") >= 2
