"""ComfyUI workflow templates: the shipped one, placeholders found or declared, and broken templates named."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ark.images.workflow import WorkflowError, default_path, load


def write(tmp_path: Path, graph: object) -> Path:
    path = tmp_path / "flow.json"
    path.write_bytes(orjson.dumps(graph))
    return path


def shipped() -> dict[str, dict[str, object]]:
    graph: dict[str, dict[str, object]] = orjson.loads(default_path().read_bytes())
    return graph


def test_the_shipped_template_binds_every_placeholder_and_renders_a_fresh_copy() -> None:
    template = load(default_path())
    assert template.bindings == {
        "prompt": ("6", "text"),
        "negative_prompt": ("7", "text"),
        "width": ("5", "width"),
        "height": ("5", "height"),
        "batch_size": ("5", "batch_size"),
        "seed": ("3", "seed"),
        "steps": ("3", "steps"),
    }
    graph = template.render({"prompt": "a heron", "width": 768, "seed": 42, "batch_size": 2})
    assert graph["6"]["inputs"]["text"] == "a heron" and graph["5"]["inputs"]["width"] == 768
    assert graph["3"]["inputs"]["seed"] == 42 and graph["5"]["inputs"]["batch_size"] == 2
    assert graph["6"]["inputs"]["clip"] == ["4", 1]  # links stay links
    assert template.graph["6"]["inputs"]["text"] == ""  # the template itself is untouched
    with pytest.raises(KeyError, match="no place for cfg"):
        template.render({"cfg": 3})


def test_declared_places_win_and_are_checked(tmp_path: Path) -> None:
    graph = shipped()
    graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}
    path = write(tmp_path, graph)
    assert load(path, {"prompt": "10.text"}).bindings["prompt"] == ("10", "text")
    with pytest.raises(WorkflowError, match=r"flow.json: prompt = '11.text': no node '11'"):
        load(path, {"prompt": "11.text"})
    with pytest.raises(WorkflowError, match=r"node 10 \(CLIPTextEncode\) has no input 'words'"):
        load(path, {"prompt": "10.words"})
    with pytest.raises(WorkflowError, match="unknown placeholder 'style'"):
        load(path, {"style": "10.text"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g["8"]["inputs"].__setitem__("vae", ["99", 2]), r"node 8 \(VAEDecode\): input vae links to node 99"),
        (lambda g: g.pop("9"), "no node saves images"),
        (lambda g: g["3"].pop("class_type"), "node 3: expected an object with a class_type"),
        (lambda g: g["5"].__setitem__("inputs", [1, 2]), r"node 5 \(EmptyLatentImage\): inputs must be an object"),
    ],
)
def test_a_broken_graph_names_the_file_and_the_node(tmp_path: Path, change: object, message: str) -> None:
    graph = shipped()
    change(graph)  # type: ignore[operator]
    with pytest.raises(WorkflowError, match=message) as caught:
        load(write(tmp_path, graph))
    assert str(tmp_path / "flow.json") in str(caught.value)


def test_what_is_not_a_workflow_is_said_so(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(WorkflowError, match="not JSON"):
        load(tmp_path / "bad.json")
    with pytest.raises(WorkflowError, match="cannot read"):
        load(tmp_path / "missing.json")
    with pytest.raises(WorkflowError, match="UI workflow"):
        load(write(tmp_path, {"nodes": [], "links": []}))
    no_prompt = {"9": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}
    with pytest.raises(WorkflowError, match="no place for the prompt"):
        load(write(tmp_path, no_prompt))
