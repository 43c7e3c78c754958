"""The sections of image generation: ComfyUI (``[images]``) and the image models (``[image_models."ID"]``),
each a ComfyUI workflow template checked when the configuration is loaded (docs/images.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ark.config.declare import Scope, section, setting, show
from ark.config.types import Address, Choice, Float, HostPort, Int, Str, Url
from ark.errors import ConfigError
from ark.images.workflow import PLACEHOLDERS, default_path, load

_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only: str.isdigit() takes "²", int() does not
_PLACE = "Where the template takes {what}: NODE.INPUT (e.g. {example}); empty: found in the usual text-to-image graph."


@section
class ImagesSettings:
    """Image generation on ComfyUI (docs/images.md): where ComfyUI is, and the lifetime of generated files."""

    comfyui_url: str = setting(
        Url(allow_empty=True),
        "",
        "A ComfyUI that runs on its own (e.g. http://127.0.0.1:8188). Empty: the one `ark up` runs from "
        "comfyui_path, or none (no image models).",
    )
    comfyui_path: str = setting(
        Str(),
        "",
        "An installed ComfyUI (the folder of its main.py): `ark up` runs and supervises it on comfyui_listen.",
    )
    comfyui_python: str = setting(
        Str(),
        "",
        "The Python that runs comfyui_path's main.py. Empty: its venv/ or .venv/ when there is one, else python3.",
    )
    comfyui_listen: Address = setting(
        HostPort(), "127.0.0.1:8188", "The address of the ComfyUI `ark up` runs (loopback: Nginx serves art.DOMAIN)."
    )
    job_timeout_s: float = setting(
        Float(1.0), 300.0, "Seconds an image job may run on ComfyUI; then it is interrupted and answered 504."
    )
    max_queue: int = setting(
        Int(1, 10_000), 32, "Image requests that may wait for ComfyUI at once; more get 429 with Retry-After."
    )
    url_ttl_s: int = setting(
        Int(60, 30 * 86400), 3600, "Seconds a signed URL of response_format=url stays valid (OpenAI's: 1 hour)."
    )
    retention_hours: float = setting(
        Float(0.0, exclusive=True), 24.0, "Hours generated images are kept under DATA/images; then deleted."
    )
    memory_gb: float = setting(
        Float(0.0, exclusive=True),
        8.0,
        "GPU memory held for a job of a model that sets no memory_gb, until ComfyUI's own use during a job of "
        "that model has been measured (then the measure is used).",
    )

    def comfyui(self) -> str:
        """ComfyUI's API, or "" when there is none."""
        if self.comfyui_url:
            return self.comfyui_url.rstrip("/")
        if self.comfyui_path:
            return f"http://{self.comfyui_listen.local()}"
        return ""


def _complete_image_model(values: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """The workflow exists and is one ComfyUI would run, with a place for each value declared (the error
    names the file and the node); a relative path is taken from the config file's folder."""
    path = Path(values["workflow"]) if values["workflow"] else default_path()
    if not path.is_absolute() and scope.file is not None:
        path = scope.file.parent / path
    declared = _places(values)
    try:
        template = load(path, declared)
    except ConfigError as exc:
        raise ConfigError(f"{scope.label}: {exc}") from None
    for name in ("width", "height"):
        if name not in template.bindings:
            raise ConfigError(
                f"{scope.where(name + '_input')}: {show(str(path))} has no place for the image's {name}: declare it"
            )
    size = parse_size(values["size"])
    if size is None or not size_fits(size, values["max_side"]):
        raise ConfigError(
            f"{scope.where('size')} = {show(values['size'])}: expected WIDTHxHEIGHT, each side a multiple of 8 "
            f"from 64 to max_side ({values['max_side']}), e.g. 1024x1024"
        )
    values["workflow"] = str(path)
    return values


def parse_size(text: str) -> tuple[int, int] | None:
    """``"1024x768"`` -> (1024, 768); None for anything else."""
    found = _SIZE.fullmatch(text.strip().lower())
    if found is None:
        return None
    size = int(found[1]), int(found[2])
    return size if all(0 < side < 65536 for side in size) else None


def size_fits(size: tuple[int, int], max_side: int) -> bool:
    """Each side a multiple of 8 from 64 to ``max_side`` (a model's size, and a request's)."""
    return all(64 <= side <= max_side and side % 8 == 0 for side in size)


def _places(values: Any) -> dict[str, str]:
    found = values if isinstance(values, dict) else {f"{n}_input": getattr(values, f"{n}_input") for n in PLACEHOLDERS}
    return {name: str(found[f"{name}_input"]) for name in PLACEHOLDERS if found[f"{name}_input"]}


@section(complete=_complete_image_model)
class ImageModelSettings:
    """An image model: a ComfyUI workflow template, its GPU memory and its prices."""

    id: str  # ID of [image_models."ID"]
    workflow: str = setting(
        Str(),
        "",
        "An API-format workflow (ComfyUI's Export (API)); relative to this file. Empty: ARK's SDXL template.",
    )
    prompt_input: str = setting(Str(), "", _PLACE.format(what="the prompt", example='"6.text"'))
    negative_prompt_input: str = setting(Str(), "", _PLACE.format(what="the negative prompt", example='"7.text"'))
    width_input: str = setting(Str(), "", _PLACE.format(what="the width", example='"5.width"'))
    height_input: str = setting(Str(), "", _PLACE.format(what="the height", example='"5.height"'))
    seed_input: str = setting(Str(), "", _PLACE.format(what="the seed", example='"3.seed"'))
    steps_input: str = setting(Str(), "", _PLACE.format(what="the sampler's steps", example='"3.steps"'))
    batch_size_input: str = setting(Str(), "", _PLACE.format(what="the number of images", example='"5.batch_size"'))
    size: str = setting(Str(non_empty=True), "1024x1024", "The size when a request says none (or auto).")
    max_side: int = setting(Int(64, 16384), 2048, "Largest width or height a request may ask (pixels).")
    max_n: int = setting(Int(1, 64), 4, "Most images one request may ask (n).")
    negative_prompt: str = setting(Str(), "", "The negative prompt every request gets (a request may not set it).")
    memory_gb: float | None = setting(
        Float(0.0, exclusive=True),
        None,
        "GPU memory a job holds while it runs. Unset: measured from ComfyUI during earlier jobs ([images] "
        "memory_gb until then).",
    )
    priority: str = setting(
        Choice("high", "medium", "low"),
        "low",
        "The memory hold's priority at the arbiter: low lets chat go first when both wait for the GPU.",
    )
    cost_per_image: float = setting(
        Float(0.0),
        0.0,
        "Credits per image of 1024x1024 at the template's steps; other sizes and steps pay in proportion "
        "(pixels x steps).",
    )
    cost_per_gpu_second: float = setting(Float(0.0), 0.0, "Credits per second a job runs on ComfyUI.")

    def places(self) -> dict[str, str]:
        """The places declared in the config, placeholder -> "NODE.INPUT"."""
        return _places(self)
