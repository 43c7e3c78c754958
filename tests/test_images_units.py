"""Images without a server: OpenAI's request checked and priced, signed URLs and their expiry, retention,
the arbiter counting a ComfyUI job's memory once, and templates checked with the configuration."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ark.arbiter.catalog import Entry
from ark.arbiter.policy import GB, Comfy, ModelInfo, Priority
from ark.arbiter.scheduler import Arbiter
from ark.cli.main import main
from ark.config import load_settings
from ark.config.images import ImageModelSettings, parse_size
from ark.errors import ConfigError, InvalidRequest, ModelNotFound
from ark.gateway.budgets import Budgets, Price
from ark.images.files import ImageFiles, base_url
from ark.images.request import ImageModel, parse
from ark.images.workflow import default_path, load

SDXL = ImageModel(ImageModelSettings(id="sdxl", cost_per_image=2.0, max_n=3), load(default_path()))
MODELS = {"sdxl": SDXL}


def test_a_request_gets_the_model_defaults_and_quality_maps_to_steps() -> None:
    request = parse({"prompt": "a heron"}, MODELS)
    assert (request.model.id, request.n, request.size, request.response_format) == ("sdxl", 1, "1024x1024", "url")
    assert request.steps == 30 and 0 <= request.seed < 2**64  # the template's steps; a fresh seed
    assert parse({"prompt": "x", "quality": "low"}, MODELS).steps == 15
    assert parse({"prompt": "x", "quality": "hd"}, MODELS).steps == 45
    values = parse({"prompt": "x", "n": 3, "size": "512x768", "seed": 9}, MODELS).values()
    assert values == {
        "prompt": "x",
        "negative_prompt": "",
        "width": 512,
        "height": 768,
        "seed": 9,
        "batch_size": 3,
        "steps": 30,
    }
    assert parse({"prompt": "x", "style": "natural", "user": "someone"}, MODELS).prompt == "x"  # accepted, no place


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 32_001}, "prompt"),
        ({"prompt": "x", "n": 4}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 1.0}, "n"),
        ({"prompt": "x", "size": "1024"}, "size"),
        ({"prompt": "x", "size": "1020x1024"}, "size"),
        ({"prompt": "x", "size": "4096x4096"}, "size"),
        ({"prompt": "x", "size": 1024}, "size"),
        ({"prompt": "x", "size": "\u00b2x64"}, "size"),  # a digit to str.isdigit(), not to int()
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "output_format": "webp"}, "output_format"),
        ({"prompt": "x", "style": "loud"}, "style"),
    ],
)
def test_what_openai_would_refuse_is_a_400_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse(body, MODELS)
    assert refused.value.param == param


def test_an_unknown_model_is_a_404() -> None:
    with pytest.raises(ModelNotFound):
        parse({"prompt": "x", "model": "dall-e-3"}, MODELS)


def test_an_image_is_priced_by_pixels_and_steps_and_reserved_at_a_fixed_price() -> None:
    assert SDXL.cost_per_image(1024, 1024, 30) == 2.0
    assert SDXL.cost_per_image(512, 512, 30) == 0.5
    assert SDXL.cost_per_image(1024, 1024, 45) == 3.0
    price = Price(fixed=6.0, gpu_second=0.01)
    assert price.cost(0, 0, 100) == 7.0
    budgets = Budgets()
    assert budgets.reserve(None, price, 0, 0, 300, _now()) is None  # the master key: no budget


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 12, 7, tzinfo=UTC)


def test_signed_urls_expire_and_refuse_forgery_and_names_arks_does_not_write(tmp_path: Path) -> None:
    files = ImageFiles(tmp_path / "images", b"k" * 32, ttl_s=3600, retention_s=86400)
    name = files.save(b"\x89PNG...")
    url = files.url("http://ark", name, now=1_000_000)
    assert url.startswith(f"http://ark/v1/images/files/{name}?expires=1003600&sig=")
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    assert files.check(name, query, now=1_003_599).status == 200
    assert files.check(name, query, now=1_003_600).why == "this image URL has expired"
    assert files.check(name, {**query, "expires": "1999999"}, now=1_000_000).status == 403  # a later expiry, forged
    other = ImageFiles(tmp_path / "images", b"j" * 32, ttl_s=3600, retention_s=86400)
    assert other.check(name, query, now=1_000_000).status == 403  # another ARK's key
    for forged in ({**query, "expires": "\u00b2"}, {**query, "sig": "\u00e9"}, {}, {"expires": "9" * 13, "sig": ""}):
        assert files.check(name, forged, now=1_000_000).status == 403
    for trick in ("../ark.db", name.upper(), name[:-4] + ".txt", "/etc/passwd", "", ".part-x"):
        assert files.check(trick, query, now=1_000_000).status == 404
    assert oct(os.stat(tmp_path / "images").st_mode & 0o777) == "0o700"


def test_retention_deletes_old_images_and_crash_leftovers_only(tmp_path: Path) -> None:
    files = ImageFiles(tmp_path, b"k" * 32, ttl_s=3600, retention_s=3600)
    old, new = files.save(b"old"), files.save(b"new")
    (tmp_path / ".part-abc").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not ours")
    for path in (tmp_path / old, tmp_path / ".part-abc", tmp_path / "notes.txt"):
        os.utime(path, (10_000, 10_000))
    os.utime(tmp_path / new, (15_000, 15_000))
    assert files.prune(now=16_000) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new, "notes.txt"])


def test_urls_name_the_host_the_client_used_when_it_is_a_host() -> None:
    assert base_url("llm.example.org", "https", "http://127.0.0.1:4000") == "https://llm.example.org"
    assert base_url("[::1]:4000", None, "http://127.0.0.1:4000") == "http://[::1]:4000"
    for bad in (None, "evil.org/x", 'a"b', "a b", "x\r\ny"):
        assert base_url(bad, "https", "http://127.0.0.1:4000") == "http://127.0.0.1:4000"


def test_a_comfyui_jobs_memory_is_counted_once_and_never_freed_under_it() -> None:
    async def main() -> None:
        comfy = Comfy(used=GB // 2 + 6 * GB, idle=GB // 2)  # the job's checkpoint, loaded into its hold
        catalog = {"m": Entry(ModelInfo("m", 4 * GB, Priority.MEDIUM), None, 300.0, "config")}
        arbiter = Arbiter(catalog, driver=None, capacity=16 * GB, max_wait=5, queue_size=4, comfy=lambda: comfy)  # type: ignore[arg-type]
        arbiter.start()
        try:
            hold = await arbiter.hold("image job", 6 * GB, in_comfyui=True)
            snapshot = arbiter.snapshot()
            assert snapshot.comfy == Comfy(GB // 2, GB // 2, busy=True) and snapshot.held == 6 * GB
            assert snapshot.used == GB // 2 + 6 * GB  # not 12.5 GB: the checkpoint is inside the hold
            hold.release()
            await asyncio.sleep(0)
            assert arbiter.snapshot().comfy == comfy  # the cached checkpoint is ComfyUI's again, freeable
            other = await arbiter.hold("render", 2 * GB)
            assert arbiter.snapshot().comfy == comfy  # a hold that is not ComfyUI's changes nothing there
            other.release()
        finally:
            await arbiter.close()

    asyncio.run(main())


def test_config_check_names_the_template_and_node_of_a_broken_workflow(tmp_path: Path) -> None:
    (tmp_path / "flow.json").write_text('{"3": {"class_type": "KSampler", "inputs": {"model": ["4", 0]}}}')
    config = tmp_path / "ark.toml"
    config.write_text(
        '[images]\ncomfyui_url = "http://127.0.0.1:8188"\n[image_models."mine"]\nworkflow = "flow.json"\n'
    )
    result = CliRunner().invoke(main, ["config", "check", "--config", str(config), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert '[image_models."mine"]' in result.output and "flow.json" in result.output and "node 3" in result.output
    config.write_text('[images]\ncomfyui_url = "http://127.0.0.1:8188"\n[image_models."mine"]\nsize = "big"\n')
    with pytest.raises(ConfigError, match="size"):
        load_settings(config_path=config, data_dir=tmp_path / "d", env={})
    config.write_text('[images]\ncomfyui_url = "http://127.0.0.1:8188"\n')
    ok = CliRunner().invoke(main, ["config", "check", "--config", str(config), "--data-dir", str(tmp_path / "d")])
    assert ok.exit_code == 0 and "sdxl on http://127.0.0.1:8188" in ok.output
    assert parse_size("640X480") == (640, 480) and parse_size("0x5") is None and parse_size("x") is None


def test_the_arbiter_plans_again_when_comfyuis_job_ends_even_if_its_memory_stays() -> None:
    """A large load that waited for ComfyUI's job can free its (still loaded) models as soon as it is idle."""
    from ark.arbiter.devices import Reading
    from ark.arbiter.service import Probe

    class Device:
        def read(self) -> Reading:
            return Reading("virtual", 0, "virtual", 16 * GB, 0)

    class Driver:
        idle, busy_now = GB // 2, True

        async def used(self) -> int:
            return GB // 2 + 6 * GB  # the checkpoint stays loaded after the job

        async def busy(self) -> bool:
            return self.busy_now

    class Arbiter:
        pokes = 0

        def poke(self) -> None:
            self.pokes += 1

    async def main() -> None:
        await probe.tick()
        arbiter = Arbiter()
        probe.arbiter = arbiter  # type: ignore[assignment]
        await probe.tick()
        assert arbiter.pokes == 0  # nothing changed
        driver.busy_now = False
        await probe.tick()
        assert arbiter.pokes == 1 and probe.comfy == Comfy(GB // 2 + 6 * GB, GB // 2, busy=False)

    driver = Driver()
    probe = Probe(Device(), Device().read(), driver)  # type: ignore[arg-type]
    asyncio.run(main())
