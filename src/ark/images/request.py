"""An image request in OpenAI's shape (``POST /v1/images/generations``), checked once at the edge into an
:class:`ImageRequest`, and the image models it may name (a template and the prices of its images)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ark.config.images import ImageModelSettings, parse_size, size_fits
from ark.errors import InvalidRequest, ModelNotFound
from ark.images.workflow import Template

MAX_PROMPT = 32_000  # characters (OpenAI's gpt-image-1; dall-e-3 takes 4,000)
BASE_PIXELS = 1024 * 1024  # cost_per_image is for this many pixels
SEED_LIMIT = 2**64  # ComfyUI's seeds are unsigned 64-bit
# quality -> the share of the template's sampler steps (OpenAI's names: dall-e-3 standard/hd, gpt-image low..high)
QUALITY_STEPS = {"auto": 1.0, "standard": 1.0, "medium": 1.0, "low": 0.5, "high": 1.5, "hd": 1.5}
STYLES = ("vivid", "natural")  # accepted as OpenAI's; no template of a diffusion model has a place for them
FORMATS = ("url", "b64_json")


@dataclass(frozen=True)
class ImageModel:
    settings: ImageModelSettings
    template: Template

    @property
    def id(self) -> str:
        return self.settings.id

    def base_steps(self) -> int | None:
        """The template's own sampler steps, when it has a place for them."""
        place = self.template.bindings.get("steps")
        value = self.template.graph[place[0]]["inputs"][place[1]] if place else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def cost_per_image(self, width: int, height: int, steps: int | None) -> float:
        """The price of one image: ``cost_per_image`` for 1024x1024 at the template's steps, in proportion."""
        base = self.base_steps()
        share = steps / base if steps and base else 1.0
        return self.settings.cost_per_image * (width * height / BASE_PIXELS) * share


@dataclass(frozen=True)
class ImageRequest:
    model: ImageModel
    prompt: str
    n: int
    width: int
    height: int
    steps: int | None  # None: the template's own (it has no place for steps)
    seed: int
    response_format: str
    quality: str

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def values(self) -> dict[str, Any]:
        """What goes into the template's places (those it has)."""
        values: dict[str, Any] = {
            "prompt": self.prompt,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "batch_size": self.n,
            "negative_prompt": self.model.settings.negative_prompt,
        }
        if self.steps is not None:
            values["steps"] = self.steps
        places = self.model.template.bindings
        return {name: value for name, value in values.items() if name in places}


def parse(body: Mapping[str, Any], models: Mapping[str, ImageModel]) -> ImageRequest:
    """Check an image request against OpenAI's rules and the model's limits; 400 naming the parameter."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' is required: a description of the image.", param="prompt")
    if len(prompt) > MAX_PROMPT:
        raise InvalidRequest(f"'prompt' is longer than {MAX_PROMPT} characters.", param="prompt")
    model = _model(body.get("model"), models)
    limits = model.settings
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limits.max_n:
        raise InvalidRequest(f"'n' must be an integer from 1 to {limits.max_n} for {model.id}.", param="n")
    width, height = _size(body.get("size"), model)
    response_format = _choice(body, "response_format", FORMATS, "url")
    quality = _choice(body, "quality", tuple(QUALITY_STEPS), "auto")
    _choice(body, "style", STYLES, "vivid")
    _choice(body, "output_format", ("png",), "png")  # ComfyUI's SaveImage writes PNG: others are refused
    base = model.base_steps()
    steps = max(1, round(base * QUALITY_STEPS[quality])) if base else None
    seed = body.get("seed")  # not OpenAI's: an extension for reproducible images
    if seed is None:
        seed = secrets.randbelow(SEED_LIMIT)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InvalidRequest("'seed' must be an integer from 0 to 2**64 - 1.", param="seed")
    return ImageRequest(model, prompt, n, width, height, steps, seed, response_format, quality)


def _model(name: Any, models: Mapping[str, ImageModel]) -> ImageModel:
    if name is None:
        if not models:
            raise ModelNotFound("no image model: this ARK has no ComfyUI ([images] comfyui_url or comfyui_path)")
        return next(iter(models.values()))
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("'model' must be the id of an image model from GET /v1/models.", param="model")
    model = models.get(name)
    if model is None:
        raise ModelNotFound(name[:256])
    return model


def _size(value: Any, model: ImageModel) -> tuple[int, int]:
    limits = model.settings
    if value is None or value == "auto":
        size = parse_size(limits.size)
        assert size is not None  # checked when the configuration was loaded
        return size
    size = parse_size(value) if isinstance(value, str) else None
    top = limits.max_side
    if size is None or not size_fits(size, top):
        raise InvalidRequest(
            f"'size' must be WIDTHxHEIGHT (or auto), each side a multiple of 8 from 64 to {top} for {model.id}.",
            param="size",
        )
    return size


def _choice(body: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(allowed)}.", param=name)
    return str(value)
