"""ARK's error tree.

Every error ARK raises on purpose derives from :class:`ArkError`. Errors that
reach an API client carry the HTTP status and the OpenAI error ``type`` and
``code`` they are answered with; one handler in the gateway turns them into
``{"error": {"message", "type", "param", "code"}}``. The command line prints
the message of any other and exits 1 (a ConfigError: 2), in one place
(``ark.cli.main``). Classes defined elsewhere are listed with their module.

    ArkError
    ├── ConfigError                 bad ark.toml / environment (CLI exit 2)
    │   └── WorkflowError           ark.images.workflow: a ComfyUI workflow template that cannot be used
    ├── ListenError                 an address to listen on is taken, or not this machine's
    │   └── ConsoleError            [console] listen
    ├── AuthError                   ARK's own users and sessions
    │   ├── UserError               ark.auth.users: no such user; a name, e-mail or role refused
    │   ├── PasswordProblem         ark.auth.passwords: a new password refused (too short, too long)
    │   └── SecretFileError         ark.auth.signing: DATA/auth.key unreadable, malformed or not private
    ├── EdgeError                   render, certificates, WireGuard peers, firewall
    ├── StoreError                  ark.store.migrate: the database cannot be opened or is not ARK's
    ├── AdminError                  ark.admin_client: the gateway's management API is down or refused a call
    ├── PullError                   ark.engines.pull: a model download failed
    ├── CpuBackendError             ark.engines.cpu_backend: no llama.cpp CPU variant can be registered
    ├── Refused                     ark.engines.llama_worker: a request the worker refuses (answered 400)
    ├── DeviceError                 ark.arbiter.devices: no GPU (or memory size) the arbiter can manage
    ├── DriverError                 ark.arbiter.drivers: an engine did not load, unload or free in time
    ├── WorkloadError               ark.arbiter._fields: a bad `ark gpu simulate` workload (CLI exit 2)
    ├── StartFailed                 ark.supervisor.supervisor: a supervised service did not come up
    ├── InstallError                ark.supervisor.installs: `ark services install` failed a step
    ├── BackupError                 ark.backup.crypto: a backup that cannot be made, read or restored
    │   └── S3Error                 ark.backup.s3: a copy in the S3 store not made, listed or read
    ├── DeployError                 ark.deploy.box: `ark deploy apply` stopped (a command failed, a tool is missing)
    └── ApiError                    answered to an API client
        ├── InvalidRequest          400 invalid_request_error
        │   └── WorkflowRejected    ark.images.comfyui: 400 workflow_rejected (ComfyUI's node_errors)
        ├── ModelWontFit            400 model_too_large (more than the GPU can ever hold)
        ├── AuthenticationError     401 invalid_api_key
        │   └── UnknownKey          ark.gateway.front: not among the keys in memory
        ├── PermissionDenied        403 model_not_allowed
        │   ├── AdminOnly           403 admin_only
        │   └── LimitReached        ark.gateway.me: 403 limit_reached (a person's keys, [console] keys_per_person)
        ├── ModelsManaged           ark.ollama_api.component: 403 models_managed_by_ark (pull, push, create...)
        ├── NotFound                404 not_found (a key or team)
        │   └── UnknownUrl          404 unknown_url
        ├── ModelNotFound           404 model_not_found
        ├── ModelBusy               409 model_busy (an unload refused while it serves)
        ├── BodyTooLarge            413 request_too_large
        ├── QueueFull               429 queue_full (Retry-After)
        ├── RateLimited             ark.gateway.ratelimits: 429 rate_limit_exceeded (Retry-After)
        ├── InsufficientQuota       429 insufficient_quota (a budget is spent)
        ├── UpstreamError           502 upstream_error (engine answered badly or not at all)
        │   ├── JobFailed           ark.images.comfyui: 502 image_job_failed (a ComfyUI node raised)
        │   ├── JobInterrupted      ark.images.comfyui: 502 image_job_interrupted (on ComfyUI's side)
        │   └── ComfyUnavailable    ark.images.comfyui: 502 comfyui_unavailable
        ├── EngineCrashed           503 engine_crashed (an engine worker died under the request; Retry-After)
        ├── ModelOffloaded          503 model_offloaded
        ├── EngineDown              503 engine_unavailable
        └── UpstreamTimeout         504 upstream_timeout
            └── JobTimeout          ark.images.comfyui: 504 (an image job past [images] job_timeout_s)

Not in the tree, on purpose: the transport's own exceptions (``ark.wire``: ConnectError, ConnectTimeout,
ConnectionClosed, ProtocolError...), which ``ark.engines._http`` and ``ark.admin_client`` translate, and
the CLI's ``click.ClickException`` subclasses, which are the translation (tests/test_errors.py keeps the
short list of the rest).
"""

from __future__ import annotations


class ArkError(Exception):
    """Base of every error ARK raises on purpose."""


class ConfigError(ArkError):
    """The configuration (file or environment) is invalid.

    The message names where the value came from, the key, the bad value and
    what was expected, so that an operator can fix it without reading code.
    """


class ListenError(ArkError):
    """A listener cannot bind its address: the port is taken, or the address is not this machine's."""


class ConsoleError(ListenError):
    """The console cannot listen on ``[console] listen``."""


class AuthError(ArkError):
    """ARK's own users and sessions: a user that does not exist or a bad field, a refused password, an
    unusable auth secret file. The message says what to do; the CLI prints it as is."""


class EdgeError(ArkError):
    """Rendering or applying the edge (Nginx, certificates, WireGuard, firewall) failed.

    The message says what to do next; the CLI prints it as is.
    """


class ApiError(ArkError):
    """An error answered to an API client in OpenAI's error shape."""

    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = headers or []


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class AdminOnly(PermissionDenied):
    code = "admin_only"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class UnknownUrl(NotFound):
    code = "unknown_url"


class ModelNotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        self.model = model


class BodyTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class QueueFull(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class InsufficientQuota(ApiError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(ApiError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class EngineCrashed(ApiError):
    """The process running the model died under the request (a fault, an abort, out of memory, killed)."""

    status = 503
    type = "server_error"
    code = "engine_crashed"


class UpstreamTimeout(ApiError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


# the GPU arbiter's answers (ark.arbiter)
class ModelWontFit(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "model_too_large"


class ModelOffloaded(ApiError):
    status = 503
    type = "server_error"
    code = "model_offloaded"


class EngineDown(ApiError):
    status = 503
    type = "server_error"
    code = "engine_unavailable"


class ModelBusy(ApiError):
    status = 409
    type = "invalid_request_error"
    code = "model_busy"
