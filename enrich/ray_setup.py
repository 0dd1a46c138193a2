"""Ray for a run: the cluster address checked before Ray waits on it, the local cluster started
with its token auth kept private, and Ray Data's context set for enrich's streaming (order
kept, Ray's own progress bars and advice off)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from enrich.config import RunConfig
from enrich.errors import Terminated, UsageError
from enrich.source import connect_error

log = logging.getLogger(__name__)

RAY_PROBE_S = 5.0


def probe_ray(address: str) -> None:
    """A cluster address (``--ray-address`` / ``$RAY_ADDRESS``) where nothing listens is a usage
    error at once: ``ray.init`` itself waits on it for minutes, retrying."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if target in ("auto", "local") or not host or not port.isdigit():
        return  # Ray finds these itself, or says what is wrong with them
    why = connect_error(host, int(port), RAY_PROBE_S)
    if why is not None:
        raise UsageError(f"--ray-address {address!r} (or $RAY_ADDRESS): no Ray cluster answers "
                         f"there ({why}); fix the address, or leave it out to start a local Ray")


def init_ray(cfg: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Quiet Ray's start-up notice about its default token auth: on a local Ray that this process
    # starts it is expected, and every run would print it.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                  log_to_driver=False, configure_logging=True)
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **kwargs)
    else:
        _check_local_auth()
        ray.init(num_cpus=cfg.num_cpus or max(2, os.cpu_count() or 2), **kwargs)
        _restrict_token_file()
    _sigterm_interrupts()


def _sigterm_interrupts() -> None:
    """SIGTERM as an interruption. Ray 2.60's core worker, connected inside ``ray.init``, answers
    SIGTERM to the driver with a C++ stack dump on stderr (``*** SIGTERM received at time=...``,
    ``PC: @ ... clock_nanosleep``, frames) and exit 15, before enrich can say a word or the
    journal can record the stop. Set after ``ray.init``, this handler replaces that one; signals
    reach Python handlers in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, interrupt)


# A local Ray (2.60) binds its gRPC servers (GCS, raylet, object manager, workers) to every
# network interface: `ss -ltnp` during a run shows them on *:PORT, and `_node_ip_address=
# "127.0.0.1"` does not change that. What keeps other machines out is Ray's token
# authentication, on by default in 2.60 for a cluster that ray.init() starts: a client without
# the token is refused. Ray writes the token to ~/.ray/auth_token readable by everyone (0644);
# enrich makes it the user's alone. An explicit RAY_AUTH_MODE other than "token" is respected,
# with a warning.
def _check_local_auth() -> None:
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        log.warning("RAY_AUTH_MODE=%s: the local Ray cluster that enrich starts listens on every "
                    "network interface and accepts clients without authentication", mode)


def _restrict_token_file() -> None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return  # given in the environment, not in a file
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray",
                                                                 "auth_token")
    try:
        if os.path.isfile(path) and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError as exc:  # someone else's file: say so, do not fail the run
        log.warning("could not make the Ray token file %s readable by this user only: %s", path, exc)


def configure_data_context() -> None:
    import ray.data

    # Ray Data logs every dataset start and finish at INFO and warns that we turned its progress
    # bars off (they would garble our progress line). Set after import: its config resets levels.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # contiguous commits need source order
    ctx.enable_progress_bars = False  # our own progress line; Ray's bars garble it
    ctx.print_on_execution_start = False
    # Ray Data's issue detectors print multi-paragraph memory advice into the run's output every
    # 30 s (for the engine's CPU stages, whose ~0.5 GB per actor is expected): off.
    ctx.issue_detectors_config.detectors = []
