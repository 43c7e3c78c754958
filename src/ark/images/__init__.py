"""Images through ARK: ``/v1/images/generations`` on ComfyUI under the GPU arbiter, metered like chat.

``workflow`` (templates), ``request`` (OpenAI's request), ``comfyui`` (ComfyUI's job API), ``files``
(signed URLs), ``component`` (the component ``ark up`` starts). Nothing is imported here: the
configuration checks templates with ``workflow`` before the runtime exists.
"""
