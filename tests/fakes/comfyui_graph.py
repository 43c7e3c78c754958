"""The graph side of the ComfyUI stand-in (``comfyui.py``): the few node classes of ComfyUI's nodes.py it
knows, a prompt checked as execution.py's ``validate_prompt`` and ``validate_inputs`` check it (same error
types, messages and ``node_errors``), the order its nodes run in, and the PNGs it makes
(Comfy-Org/ComfyUI 0.38: execution.py 04e2a91).
"""

from __future__ import annotations

import struct
import traceback
import zlib
from dataclasses import dataclass
from typing import Any

SAMPLERS = (  # noqa: SIM905
    "euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp heun heunpp2 exp_heun_2_x0 exp_heun_2_x0_sde dpm_2 "
    "dpm_2_ancestral lms dpm_fast dpm_adaptive dpmpp_2s_ancestral dpmpp_2s_ancestral_cfg_pp dpmpp_sde dpmpp_sde_gpu "
    "dpmpp_2m dpmpp_2m_cfg_pp dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde "
    "dpmpp_3m_sde_gpu ddpm lcm ipndm ipndm_v deis cfgpp_ud10_ab res_multistep res_multistep_cfg_pp "
    "res_multistep_ancestral res_multistep_ancestral_cfg_pp gradient_estimation gradient_estimation_cfg_pp er_sde "
    "seeds_2 seeds_3 sa_solver sa_solver_pece ddim uni_pc uni_pc_bh2"
).split()
SCHEDULERS = "simple sgm_uniform karras exponential ddim_uniform beta normal linear_quadratic kl_optimal".split()  # noqa: SIM905
CONVERT: dict[str, Any] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
Item = tuple[float, str, dict[str, Any], dict[str, Any], list[str]]  # number, prompt_id, graph, extra_data, outputs


@dataclass(frozen=True)
class NodeClass:
    inputs: dict[str, tuple[Any, dict[str, Any]]]  # INPUT_TYPES "required": name -> (type or choices, options)
    returns: tuple[str, ...]
    output: bool = False


def node_classes(checkpoints: list[str]) -> dict[str, NodeClass]:
    """The few classes of nodes.py this fake knows (tooltips left out)."""
    size = {"default": 1024, "min": 16, "max": 16384, "step": 8}
    image: tuple[str, dict[str, Any]] = ("IMAGE", {})
    text = ("STRING", {"multiline": True})
    return {
        "CheckpointLoaderSimple": NodeClass({"ckpt_name": (checkpoints, {})}, ("MODEL", "CLIP", "VAE")),
        "CLIPTextEncode": NodeClass({"text": text, "clip": ("CLIP", {})}, ("CONDITIONING",)),
        "EmptyLatentImage": NodeClass(
            {
                "width": ("INT", size),
                "height": ("INT", size),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            },
            ("LATENT",),
        ),
        "KSampler": NodeClass(
            {
                "model": ("MODEL", {}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (SAMPLERS, {}),
                "scheduler": (SCHEDULERS, {}),
                "positive": ("CONDITIONING", {}),
                "negative": ("CONDITIONING", {}),
                "latent_image": ("LATENT", {}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            ("LATENT",),
        ),
        "VAEDecode": NodeClass({"samples": ("LATENT", {}), "vae": ("VAE", {})}, ("IMAGE",)),
        "SaveImage": NodeClass(
            {"images": image, "filename_prefix": ("STRING", {"default": "ComfyUI"})}, ("IMAGE",), True
        ),
        "PreviewImage": NodeClass({"images": image}, ("IMAGE",), True),
    }


def comfy_error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    """An error as ComfyUI answers it: ``{"type", "message", "details", "extra_info"}``."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def type_name(exc: BaseException) -> str:
    """An exception's type as ComfyUI's ``full_type_name`` gives it (no module for builtins)."""
    module, name = type(exc).__module__, type(exc).__qualname__
    return name if module == "builtins" else f"{module}.{name}"


def validate_prompt(prompt: dict[str, Any], classes: dict[str, NodeClass]) -> tuple[bool, Any, list[str], Any]:
    """execution.validate_prompt: (valid, error, the outputs to execute, node_errors)."""
    outputs = []
    for node_id, node in prompt.items():
        class_type, title = node.get("class_type"), node.get("_meta", {}).get("title")
        if class_type not in classes:
            if class_type is None:
                why = f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted or a "
                why += "custom node is missing."
            else:
                title = title or class_type
                why = f"Node '{title}' not found. The custom node may not be installed."
            info = {"node_id": node_id, "class_type": class_type, "node_title": title}
            return False, comfy_error("missing_node_type", why, f"Node ID '#{node_id}'", **info), [], {}
        if classes[class_type].output:
            outputs.append(node_id)
    if not outputs:
        return False, comfy_error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    good: list[str] = []
    failed: list[dict[str, Any]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        try:
            valid, reasons = _validate_inputs(prompt, output, validated, classes)
        except Exception as exc:  # a link to a node that is not there, say
            info = {"exception_type": type_name(exc), "traceback": traceback.format_tb(exc.__traceback__)}
            valid, reasons = (
                False,
                [comfy_error("exception_during_validation", "Exception when validating node", str(exc), **info)],
            )
            validated[output] = (False, reasons)
        if valid:
            good.append(output)
            continue
        failed += reasons
        for node_id, (ok, errors) in validated.items():
            if not ok and errors:  # nodes downstream of a bad one fail too, but with no errors of their own
                entry = {"errors": errors, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]}
                node_errors.setdefault(node_id, entry)["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for e in failed)
        return (
            False,
            comfy_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            [],
            node_errors,
        )
    return True, None, good, node_errors


def _validate_inputs(prompt: dict[str, Any], node_id: str, validated: dict[str, Any], classes: Any) -> Any:
    """execution.validate_inputs: one node's inputs and, through its links, the nodes it takes them from."""
    if node_id in validated:
        return validated[node_id]
    inputs, errors, valid = prompt[node_id]["inputs"], [], True
    for name, (kind, options) in classes[prompt[node_id]["class_type"]].inputs.items():
        if name not in inputs:
            errors.append(comfy_error("required_input_missing", "Required input is missing", name, input_name=name))
        elif not isinstance(inputs[name], list):
            inputs[name], error = _check_value(name, kind, options, inputs[name])  # stored converted, as there
            errors += [error] if error else []
        elif len(link := inputs[name]) != 2:
            why = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            errors.append(
                comfy_error(
                    "bad_linked_input", why, name, input_name=name, input_config=[kind, options], received_value=link
                )
            )
        elif (got := classes[prompt[link[0]]["class_type"]].returns[link[1]]) != kind:  # no such node: raises, as there
            info = {"input_name": name, "input_config": [kind, options], "received_type": got, "linked_node": link}
            why = f"{name}, received_type({got}) mismatch input_type({kind})"
            errors.append(comfy_error("return_type_mismatch", "Return type mismatch between linked nodes", why, **info))
        else:
            valid = _validate_inputs(prompt, link[0], validated, classes)[0] and valid
    validated[node_id] = (valid and not errors, errors)
    return validated[node_id]


def _check_value(name: str, kind: Any, options: dict[str, Any], value: Any) -> tuple[Any, dict[str, Any] | None]:
    """A widget's value converted to its type, and the error ComfyUI gives for it (or None)."""
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    info = {"input_name": name, "input_config": [kind, options], "received_value": value}
    try:
        value = CONVERT[kind](value) if isinstance(kind, str) and kind in CONVERT else value
    except Exception as exc:
        why = f"Failed to convert an input value to a {kind} value"
        return value, comfy_error(
            "invalid_input_type", why, f"{name}, {value}, {exc}", **info, exception_message=str(exc)
        )
    info["received_value"] = value
    if "min" in options and value < options["min"]:
        return value, comfy_error(
            "value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", name, **info
        )
    if "max" in options and value > options["max"]:
        return value, comfy_error(
            "value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", name, **info
        )
    if isinstance(kind, list) and value not in kind:
        listed = f"(list of length {len(kind)})" if len(kind) > 20 else str(kind)
        info["input_config"] = None if len(kind) > 20 else info["input_config"]  # not a gigantic list back
        return value, comfy_error(
            "value_not_in_list", "Value not in list", f"{name}: {value!r} not in {listed}", **info
        )
    return value, None


def execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """Each node after the nodes it takes inputs from (a depth-first walk, not ComfyUI's ExecutionList)."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id not in order:
            for value in prompt[node_id]["inputs"].values():
                if isinstance(value, list):
                    visit(value[0])
            order.append(node_id)

    for output in sorted(outputs):
        visit(output)
    return order


def png(width: int, height: int, rgb: tuple[int, int, int], text: dict[str, str]) -> bytes:
    """A valid RGB PNG of one colour, with a tEXt chunk for each of ``text``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    texts = b"".join(chunk(b"tEXt", f"{key}\0{value}".encode("latin-1")) for key, value in text.items())
    pixels = zlib.compress((b"\0" + bytes(rgb) * width) * height)
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + texts + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
