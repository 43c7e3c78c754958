"""Images through ARK (issue 17, in progress): ComfyUI workflow templates so far (``ark.images.workflow``)."""
