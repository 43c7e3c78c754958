"""ComfyUI workflow templates: an API-format workflow (what ComfyUI's "Export (API)" writes, and what its
``POST /prompt`` takes) and where a request's values go in it.

A workflow is ``{node id: {"class_type": ..., "inputs": {name: value or [node id, output index]}}}``.
A template binds the values an image request carries (``prompt``, ``negative_prompt``, ``width``,
``height``, ``seed``, ``steps``, ``batch_size``) to node inputs, ``"6.text"``, either declared or found in
the usual text-to-image graph (a sampler whose positive and negative inputs come from text encoders and
whose latent comes from an empty latent image). Loading checks the whole graph, so that a broken template
is found when the configuration is checked, naming the file and the node, and never by a person waiting
for a picture. Pure functions on plain data, but for reading the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from ark.errors import ConfigError

PLACEHOLDERS = ("prompt", "negative_prompt", "width", "height", "seed", "steps", "batch_size")
OUTPUT_NODES = frozenset({"SaveImage", "PreviewImage"})  # the nodes whose images /history lists
_SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced"})
_SAMPLER_INPUTS = {"seed": ("seed", "noise_seed"), "steps": ("steps",)}


class WorkflowError(ConfigError):
    """A workflow template that ComfyUI would refuse, or that does not say where a request's values go."""


@dataclass(frozen=True)
class Template:
    source: str  # the file, for messages
    graph: Mapping[str, Any]
    bindings: Mapping[str, tuple[str, str]]  # placeholder -> (node id, input name)

    def render(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow with ``values`` in their places (a fresh copy: the template is never changed)."""
        unknown = sorted(set(values) - set(self.bindings))
        if unknown:
            raise KeyError(f"{self.source} has no place for {', '.join(unknown)}")
        graph = copy.deepcopy(dict(self.graph))
        for name, value in values.items():
            node, field = self.bindings[name]
            graph[node]["inputs"][field] = value
        return graph


def default_path() -> Path:
    """The text-to-image template ARK ships (SDXL base, 1024 x 1024)."""
    return Path(str(resources.files("ark.images") / "workflows" / "sdxl.json"))


def load(path: Path, declared: Mapping[str, str] | None = None) -> Template:
    """Read and check a template; ``declared`` binds placeholders to ``"node.input"`` (others are found)."""
    source = str(path)
    try:
        graph = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise WorkflowError(f"{source}: cannot read the workflow ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise WorkflowError(f"{source}: not JSON ({exc})") from None
    check(graph, source)
    bindings = {**infer(graph), **_declared(graph, declared or {}, source)}
    if "prompt" not in bindings:
        raise WorkflowError(
            f'{source}: no place for the prompt: declare it (prompt = "NODE.text"), or wire a CLIPTextEncode '
            "into a KSampler's positive input"
        )
    return Template(source, graph, bindings)


def check(graph: Any, source: str) -> None:
    """The graph as ComfyUI's validation sees it: nodes with a class and inputs, links to nodes that exist,
    and at least one node that saves images."""
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"{source}: expected an API-format workflow, an object of nodes (ComfyUI's Export (API))")
    if "nodes" in graph and "links" in graph:
        raise WorkflowError(f"{source}: this is a UI workflow; export it with ComfyUI's Export (API)")
    for node, body in graph.items():
        if not isinstance(body, dict) or not isinstance(body.get("class_type"), str):
            raise WorkflowError(f"{source}: node {node}: expected an object with a class_type")
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(f"{source}: node {node} ({body['class_type']}): inputs must be an object")
        for name, value in inputs.items():
            if _is_link(value) and value[0] not in graph:
                raise WorkflowError(
                    f"{source}: node {node} ({body['class_type']}): input {name} links to node {value[0]}, "
                    "which is not in the workflow"
                )
    if not any(body["class_type"] in OUTPUT_NODES for body in graph.values()):
        raise WorkflowError(f"{source}: no node saves images (SaveImage or PreviewImage)")


def infer(graph: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Where the usual text-to-image graph takes each value: from its (first) sampler's inputs."""
    found: dict[str, tuple[str, str]] = {}
    for node in sorted(graph, key=_order):
        body = graph[node]
        if body["class_type"] not in _SAMPLERS:
            continue
        inputs = body.get("inputs", {})
        for placeholder, names in _SAMPLER_INPUTS.items():
            field = next((n for n in names if n in inputs and not _is_link(inputs[n])), None)
            if field is not None:
                found[placeholder] = (node, field)
        for placeholder, link in (("prompt", "positive"), ("negative_prompt", "negative")):
            source = _linked(graph, inputs.get(link), "CLIPTextEncode", "text")
            if source is not None:
                found[placeholder] = (source, "text")
        latent = inputs.get("latent_image")
        if _is_link(latent) and graph[latent[0]]["class_type"] == "EmptyLatentImage":
            for field in ("width", "height", "batch_size"):
                if field in graph[latent[0]].get("inputs", {}):
                    found[field] = (latent[0], field)
        break
    return found


def _declared(graph: Mapping[str, Any], declared: Mapping[str, str], source: str) -> dict[str, tuple[str, str]]:
    out = {}
    for placeholder, where in declared.items():
        if placeholder not in PLACEHOLDERS:
            raise WorkflowError(
                f"{source}: unknown placeholder {placeholder!r}; expected one of {', '.join(PLACEHOLDERS)}"
            )
        node, dot, field = where.partition(".")
        if not dot or node not in graph:
            raise WorkflowError(f"{source}: {placeholder} = {where!r}: no node {node!r} in the workflow")
        if field not in graph[node].get("inputs", {}):
            raise WorkflowError(
                f"{source}: {placeholder} = {where!r}: node {node} ({graph[node]['class_type']}) has no input {field!r}"
            )
        out[placeholder] = (node, field)
    return out


def _linked(graph: Mapping[str, Any], value: Any, class_type: str, field: str) -> str | None:
    if _is_link(value) and graph[value[0]]["class_type"] == class_type and field in graph[value[0]].get("inputs", {}):
        return str(value[0])
    return None


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _order(node: str) -> tuple[int, str]:
    return (int(node), node) if node.isdigit() else (1 << 62, node)
