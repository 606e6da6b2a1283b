"""The fake models: real PNG and MP4-shaped outputs that depend on the input, fal's shapes."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from genrelay.emulator import EmulatorServer
from genrelay.emulator.models import FakeVideo, Invalid, ModelRegistry, Plan, TextToImage
from tests.emulator.helpers import FLUX, VIDEO, completed, submit


async def generate(
    client: httpx.AsyncClient, body: dict[str, Any], endpoint: str = FLUX
) -> dict[str, Any]:
    handle = await submit(client, body, endpoint=endpoint)
    await completed(client, handle)
    response = await client.get(handle["response_url"])
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def download(client: httpx.AsyncClient, url: str) -> bytes:
    # Output files are public, like fal's CDN: no key is sent.
    async with httpx.AsyncClient() as anonymous:
        response = await anonymous.get(url)
    assert response.status_code == 200
    return response.content


async def test_text_to_image_returns_fal_shape_and_real_pngs(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a red fox", "seed": 42, "image_size": {"width": 96, "height": 64}}

    result = await generate(client, {**body, "num_images": 2})
    image = result["images"][0]
    data = await download(client, image["url"])
    picture = Image.open(io.BytesIO(data))

    assert set(result) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert result["seed"] == 42
    assert result["prompt"] == "a red fox"
    assert result["has_nsfw_concepts"] == [False, False]
    assert "inference" in result["timings"]
    assert len(result["images"]) == 2
    assert set(image) == {"url", "width", "height", "content_type", "file_name", "file_size"}
    assert image["content_type"] == "image/png"
    assert image["url"].endswith("/" + image["file_name"])
    assert (image["width"], image["height"]) == (96, 64)
    assert image["file_size"] == len(data)
    assert picture.format == "PNG"
    assert picture.size == (96, 64)


async def test_sync_mode_returns_the_images_inline_as_data_uris(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a red fox", "seed": 42, "image_size": {"width": 96, "height": 64}}
    inline = (await generate(client, {**body, "sync_mode": True}))["images"][0]
    served = (await generate(client, body))["images"][0]

    prefix = "data:image/png;base64,"
    assert inline["url"].startswith(prefix)
    data = base64.b64decode(inline["url"][len(prefix) :])
    assert data == await download(client, served["url"])
    assert inline["file_size"] == len(data)
    assert Image.open(io.BytesIO(data)).size == (96, 64)


async def test_image_bytes_depend_on_prompt_seed_size_and_index(
    client: httpx.AsyncClient,
) -> None:
    base = {"prompt": "a red fox", "seed": 1, "image_size": {"width": 64, "height": 64}}
    variants = [
        base,
        {**base, "prompt": "a blue fox"},
        {**base, "seed": 2},
        {**base, "image_size": {"width": 64, "height": 48}},
    ]

    first = [
        await download(client, (await generate(client, v))["images"][0]["url"]) for v in variants
    ]
    again = await download(client, (await generate(client, base))["images"][0]["url"])
    pair = (await generate(client, {**base, "num_images": 2}))["images"]

    assert len(set(first)) == len(variants)
    assert again == first[0]
    assert await download(client, pair[0]["url"]) != await download(client, pair[1]["url"])


async def test_top_level_width_and_height_override_the_preset(client: httpx.AsyncClient) -> None:
    default = await generate(client, {"prompt": "x", "num_images": 1})
    sized = await generate(client, {"prompt": "x", "image_size": "square", "width": 40})

    assert (default["images"][0]["width"], default["images"][0]["height"]) == (1024, 768)
    assert (sized["images"][0]["width"], sized["images"][0]["height"]) == (40, 512)


async def test_flagged_prompt_gives_black_image_and_nsfw_flag(client: httpx.AsyncClient) -> None:
    result = await generate(
        client, {"prompt": "something NSFW", "image_size": {"width": 32, "height": 32}}
    )
    picture = Image.open(io.BytesIO(await download(client, result["images"][0]["url"])))

    assert result["has_nsfw_concepts"] == [True]
    assert picture.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))


async def test_video_endpoint_returns_a_deterministic_file(client: httpx.AsyncClient) -> None:
    body = {"prompt": "waves", "seed": 3, "num_frames": 8}

    first = await generate(client, body, endpoint=VIDEO)
    second = await generate(client, body, endpoint=VIDEO)
    other = await generate(client, {**body, "seed": 4}, endpoint=VIDEO)
    data = await download(client, first["video"]["url"])

    assert set(first) == {"video", "seed"}
    assert first["video"]["content_type"] == "video/mp4"
    assert first["video"]["file_size"] == len(data)
    assert data[4:8] == b"ftyp"
    assert data == await download(client, second["video"]["url"])
    assert data != await download(client, other["video"]["url"])


async def test_default_seed_is_drawn_from_the_emulator_seed(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    seeds = [(await generate(client, {"prompt": "x", "width": 16, "height": 16}))["seed"]]
    await fal.reset()
    seeds.append((await generate(client, {"prompt": "x", "width": 16, "height": 16}))["seed"])

    assert seeds[0] == seeds[1]
    assert 0 <= seeds[0] < 2**64


def detail_of(outcome: Plan | Invalid) -> list[dict[str, Any]]:
    assert isinstance(outcome, Invalid)
    return outcome.detail


@pytest.mark.parametrize(
    ("arguments", "loc", "kind"),
    [
        ({}, ["body", "prompt"], "value_error.missing"),
        ({"prompt": 3}, ["body", "prompt"], "type_error.str"),
        ({"prompt": "x", "seed": "7"}, ["body", "seed"], "type_error.integer"),
        ({"prompt": "x", "seed": True}, ["body", "seed"], "type_error.integer"),
        ({"prompt": "x", "num_images": 9}, ["body", "num_images"], "value_error.number.not_le"),
        ({"prompt": "x", "num_images": 0}, ["body", "num_images"], "value_error.number.not_ge"),
        ({"prompt": "x", "image_size": "huge"}, ["body", "image_size"], "type_error.enum"),
        ({"prompt": "x", "image_size": 5}, ["body", "image_size"], "type_error.dict"),
        (
            {"prompt": "x", "image_size": {"width": 64}},
            ["body", "image_size", "height"],
            "value_error.missing",
        ),
        (
            {"prompt": "x", "image_size": {"width": 8, "height": 64}},
            ["body", "image_size", "width"],
            "value_error.number.not_ge",
        ),
    ],
)
def test_image_validation_errors_look_like_fal(
    arguments: dict[str, Any], loc: list[str], kind: str
) -> None:
    detail = detail_of(TextToImage().plan(arguments, default_seed=1))

    assert [(entry["loc"], entry["type"]) for entry in detail] == [(loc, kind)]
    assert isinstance(detail[0]["msg"], str)


def test_non_object_input_and_video_validation() -> None:
    assert detail_of(TextToImage().plan([1], 1))[0]["type"] == "type_error.dict"
    assert detail_of(FakeVideo().plan({"num_frames": 0}, 1)) == [
        {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"},
        {
            "loc": ["body", "num_frames"],
            "msg": "ensure this value is greater than or equal to 1",
            "type": "value_error.number.not_ge",
            "ctx": {"limit_value": 1},
        },
    ]


def test_registry_matches_exact_ids_and_patterns() -> None:
    registry = ModelRegistry(["fal-ai/flux/schnell", "fal-ai/flux-1/*"], ["fal-ai/fake-video"])

    assert isinstance(registry.resolve("fal-ai/flux/schnell"), TextToImage)
    assert isinstance(registry.resolve("fal-ai/flux-1/dev"), TextToImage)
    assert isinstance(registry.resolve("fal-ai/fake-video"), FakeVideo)
    assert registry.resolve("fal-ai/flux/dev") is None


async def test_registered_endpoints_are_configurable(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    before = await client.post("/acme/my-flux", json={"prompt": "x"})
    fal.configure(image_endpoints=["acme/my-flux"])
    after = await client.post("/acme/my-flux", json={"prompt": "x"})

    assert before.status_code == 404
    assert after.status_code == 200
