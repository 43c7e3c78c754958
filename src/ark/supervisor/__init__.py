"""Third-party services ARK runs as its children: started, checked, restarted with backoff, stopped.

:class:`Supervisor` owns every child: ``start(spec)`` launches it and waits for its health check;
a child that dies is restarted after a pause that doubles (1 s, 2 s, 4 s ... at most
:data:`MAX_BACKOFF_S`) and resets once it has run for :data:`STABLE_S`; ``close()`` stops them all
(SIGTERM to the child's process group, SIGKILL after its grace period). Children never outlive ARK:
each one leads its own process group (so its own children are stopped with it) and, through
``setpriv --pdeathsig``, gets SIGTERM from the kernel if ARK itself is killed. Their output goes to
``DATA/logs/NAME.log``.
"""

from ark.supervisor.supervisor import (
    MAX_BACKOFF_S,
    STABLE_S,
    Health,
    ServiceSpec,
    StartFailed,
    Supervised,
    Supervisor,
)

__all__ = ["MAX_BACKOFF_S", "STABLE_S", "Health", "ServiceSpec", "StartFailed", "Supervised", "Supervisor"]
