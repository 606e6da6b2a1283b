"""The fake models: input validation like fal's (pydantic v1 style `detail` entries), the
files each request produces, and the output JSON in fal's shapes (fal-api.md §6).

- Text to image (`fal-ai/flux/schnell` and friends): `{"images": [File + width/height],
  "timings", "seed", "has_nsfw_concepts", "prompt"}`. With `sync_mode: true` each file's
  `url` is a `data:` URI holding the image itself, as fal's flux endpoints answer. A prompt
  containing the word `nsfw` is "flagged": a black image and `has_nsfw_concepts: [true]`,
  like fal's safety checker.
- Video (`fal-ai/fake-video`): `{"video": File, "seed"}`.
- Video by URL (`fal-ai/fake-video-url`): `{"video_url": "https://…", "seed"}`, the shape of
  models that return a bare URL string instead of a `File`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from genrelay.emulator.rendering import FileSpec, ImageSpec, VideoSpec

JSON = Any
Detail = dict[str, JSON]

IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
_MIN_SIDE, _MAX_SIDE = 16, 4096
_MAX_IMAGES = 4
_MAX_FRAMES = 240
_NSFW = re.compile(r"\bnsfw\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A rendered output file as the output JSON describes it."""

    url: str
    file_name: str
    file_size: int
    content_type: str

    def as_json(self) -> dict[str, JSON]:
        return {
            "url": self.url,
            "content_type": self.content_type,
            "file_name": self.file_name,
            "file_size": self.file_size,
        }


class OutputShape(Protocol):
    def payload(self, files: list[StoredFile], inference_time: float) -> JSON:
        """The model's output JSON once its files are stored."""
        ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What a valid input makes: the files to render and how to describe them."""

    files: tuple[FileSpec, ...]
    shape: OutputShape
    # `sync_mode`: the files come back inline, as data URIs, instead of as CDN URLs.
    inline: bool = False


@dataclass(frozen=True, slots=True)
class Invalid:
    """Input rejected by the model; becomes a 422 result."""

    detail: list[Detail]


class FakeModel(Protocol):
    def plan(self, arguments: JSON, default_seed: int) -> Plan | Invalid:
        """Validate `arguments` and decide the outputs; `default_seed` is used if none given."""
        ...


class _Fields:
    """Collects pydantic v1 style errors while reading one input object."""

    def __init__(self, arguments: Mapping[str, JSON]) -> None:
        self.arguments = arguments
        self.errors: list[Detail] = []

    def required_str(self, name: str) -> str:
        if name not in self.arguments:
            self._error((name,), "field required", "value_error.missing")
            return ""
        value = self.arguments[name]
        if not isinstance(value, str):
            self._error((name,), "str type expected", "type_error.str")
            return ""
        return value

    def integer(
        self,
        loc: tuple[str, ...],
        within: Mapping[str, JSON],
        default: int | None,
        low: int,
        high: int | None,
    ) -> int:
        """Read `within[loc[-1]]`; a missing or null value is `default`, or required if None."""
        value = within.get(loc[-1])
        if value is None:
            if default is None:
                self._error(loc, "field required", "value_error.missing")
                return low
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._error(loc, "value is not a valid integer", "type_error.integer")
            return low
        if value < low:
            self._limit(loc, "greater than or equal to", "not_ge", low)
        elif high is not None and value > high:
            self._limit(loc, "less than or equal to", "not_le", high)
        return value

    def optional_integer(self, name: str, default: int, low: int, high: int | None) -> int:
        return self.integer((name,), self.arguments, default, low, high)

    def optional_bool(self, name: str, default: bool) -> bool:
        value = self.arguments.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._error((name,), "value could not be parsed to a boolean", "type_error.bool")
            return default
        return value

    def _limit(self, loc: tuple[str, ...], words: str, code: str, limit: int) -> None:
        msg = f"ensure this value is {words} {limit}"
        self._error(loc, msg, f"value_error.number.{code}", {"limit_value": limit})

    def _error(self, loc: Iterable[str], msg: str, kind: str, ctx: Detail | None = None) -> None:
        entry: Detail = {"loc": ["body", *loc], "msg": msg, "type": kind}
        if ctx is not None:
            entry["ctx"] = ctx
        self.errors.append(entry)

    def enum_error(self, loc: tuple[str, ...], allowed: Iterable[str]) -> None:
        names = list(allowed)
        permitted = ", ".join(f"'{name}'" for name in names)
        msg = f"value is not a valid enumeration member; permitted: {permitted}"
        self._error(loc, msg, "type_error.enum", {"enum_values": names})

    def dict_error(self, loc: tuple[str, ...]) -> None:
        self._error(loc, "value is not a valid dict", "type_error.dict")


def _not_an_object() -> Invalid:
    return Invalid(
        [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    )


@dataclass(frozen=True, slots=True)
class ImagesShape:
    seed: int
    prompt: str
    nsfw: tuple[bool, ...]
    sizes: tuple[tuple[int, int], ...]

    def payload(self, files: list[StoredFile], inference_time: float) -> JSON:
        images = [
            {**file.as_json(), "width": width, "height": height}
            for file, (width, height) in zip(files, self.sizes, strict=True)
        ]
        return {
            "images": images,
            "timings": {"inference": round(inference_time, 6)},
            "seed": self.seed,
            "has_nsfw_concepts": list(self.nsfw),
            "prompt": self.prompt,
        }


class TextToImage:
    """A flux-like text-to-image model producing PNG files."""

    def plan(self, arguments: JSON, default_seed: int) -> Plan | Invalid:
        if not isinstance(arguments, dict):
            return _not_an_object()
        fields = _Fields(arguments)
        prompt = fields.required_str("prompt")
        seed = fields.optional_integer("seed", default_seed, 0, None)
        count = fields.optional_integer("num_images", 1, 1, _MAX_IMAGES)
        inline = fields.optional_bool("sync_mode", False)
        width, height = self._size(fields)
        if fields.errors:
            return Invalid(fields.errors)
        nsfw = bool(_NSFW.search(prompt))
        files = tuple(ImageSpec(prompt, seed, width, height, i, nsfw) for i in range(count))
        shape = ImagesShape(seed, prompt, (nsfw,) * count, ((width, height),) * count)
        return Plan(files, shape, inline)

    def _size(self, fields: _Fields) -> tuple[int, int]:
        """`image_size` (a preset name or `{width, height}`), overridden by top-level sizes."""
        value = fields.arguments.get("image_size", "landscape_4_3")
        width, height = IMAGE_SIZES["landscape_4_3"]
        if isinstance(value, str):
            if value not in IMAGE_SIZES:
                fields.enum_error(("image_size",), IMAGE_SIZES)
            width, height = IMAGE_SIZES.get(value, (width, height))
        elif isinstance(value, dict):
            width = fields.integer(("image_size", "width"), value, None, _MIN_SIDE, _MAX_SIDE)
            height = fields.integer(("image_size", "height"), value, None, _MIN_SIDE, _MAX_SIDE)
        else:
            fields.dict_error(("image_size",))
        width = fields.optional_integer("width", width, _MIN_SIDE, _MAX_SIDE)
        height = fields.optional_integer("height", height, _MIN_SIDE, _MAX_SIDE)
        return width, height


@dataclass(frozen=True, slots=True)
class VideoShape:
    seed: int
    bare_url: bool = False

    def payload(self, files: list[StoredFile], inference_time: float) -> JSON:
        if self.bare_url:
            return {"video_url": files[0].url, "seed": self.seed}
        return {"video": files[0].as_json(), "seed": self.seed}


class FakeVideo:
    """A text-to-video model whose output is `{"video": File}`, or `{"video_url": url}`."""

    def __init__(self, *, bare_url: bool = False) -> None:
        self._bare_url = bare_url

    def plan(self, arguments: JSON, default_seed: int) -> Plan | Invalid:
        if not isinstance(arguments, dict):
            return _not_an_object()
        fields = _Fields(arguments)
        prompt = fields.required_str("prompt")
        seed = fields.optional_integer("seed", default_seed, 0, None)
        frames = fields.optional_integer("num_frames", 24, 1, _MAX_FRAMES)
        width = fields.optional_integer("width", 640, _MIN_SIDE, _MAX_SIDE)
        height = fields.optional_integer("height", 360, _MIN_SIDE, _MAX_SIDE)
        if fields.errors:
            return Invalid(fields.errors)
        shape = VideoShape(seed, self._bare_url)
        return Plan((VideoSpec(prompt, seed, frames, width, height),), shape)


class ModelRegistry:
    """Maps endpoint ids (exact or shell-style patterns) to fake models."""

    _MAX_CACHED = 4096

    def __init__(
        self,
        image_endpoints: Iterable[str],
        video_endpoints: Iterable[str],
        video_url_endpoints: Iterable[str] = (),
    ) -> None:
        image: FakeModel = TextToImage()
        video: FakeModel = FakeVideo()
        video_url: FakeModel = FakeVideo(bare_url=True)
        self._rules = [(pattern, image) for pattern in image_endpoints]
        self._rules += [(pattern, video) for pattern in video_endpoints]
        self._rules += [(pattern, video_url) for pattern in video_url_endpoints]
        self._cache: dict[str, FakeModel | None] = {}

    def resolve(self, endpoint_id: str) -> FakeModel | None:
        """The model serving `endpoint_id`, or None (fal answers 404)."""
        try:
            return self._cache[endpoint_id]
        except KeyError:
            pass
        model = next(
            (model for pattern, model in self._rules if fnmatch.fnmatchcase(endpoint_id, pattern)),
            None,
        )
        # Unknown ids are cached too, but the cache is bounded against random probing.
        if len(self._cache) >= self._MAX_CACHED:
            self._cache.clear()
        self._cache[endpoint_id] = model
        return model
