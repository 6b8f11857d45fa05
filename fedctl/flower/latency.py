"""flwr 1.41's hard-coded waits, shortened inside the processes fedctl starts (flwr is pinned to <1.42).

Where a round's time goes on a loopback deployment with long-running ClientApps (measured, mamba_tiny,
4 SuperNodes on 2 cores): not the training, but three waits that flwr 1.41 hard-codes and exposes no
setting for:
  - an idle SuperNode asks the SuperLink for messages every 3 s (`time.sleep(3)` in
    flwr/supernode/start_client_internal.py), and waits for its ClientApp's reply in 0.5 s steps;
  - every object pull (SuperNode ← SuperLink, ClientApp ← SuperNode, ServerApp ← SuperLink) that finds
    an object not uploaded yet backs off 1 s, then 2, 4, … up to 10 s (`PULL_INITIAL_BACKOFF`,
    `PULL_BACKOFF_CAP` in flwr/supercore/constant.py, bound as default arguments);
so a 3 MB message that races its own upload waits 1–3 s at each hop.

`shorten_pull_backoff()` (ServerApp, warm ClientApp executor, tuned SuperNode) and `shorten_node_polls()`
(tuned SuperNode only) lower these to POLL_SECONDS / PULL_BACKOFF; `shorten_heartbeat()` (tuned SuperNode)
lets the SuperLink notice a dead node after 20 s instead of 60 s. The cost is more polling requests
(a few per second per node on loopback); results are unaffected (the same messages, in the same order).
Every patch checks that what it changes still exists with the expected signature and that flwr's code
still reads it the way the patch assumes (the source lines it relies on), and raises `FlwrChanged`
otherwise, so a new flwr fails loudly instead of silently keeping the old latencies. The poll patch
shortens only the loop's literal 3 s and 0.5 s sleeps, no other sleep of that module.
"""

from __future__ import annotations

import inspect
import time as _time
import types

HEARTBEAT_SECONDS = 10  # a SuperNode's declared heartbeat interval (flwr: 30 s; its minimum is 10 s)
POLL_SECONDS = 0.1  # SuperNode: idle poll of the SuperLink and wait for a reply (flwr: 3 s and 0.5 s)
PULL_BACKOFF = (0.02, 0.2)  # object pulls: first retry after, longest wait between retries (flwr: 1 s, 10 s)
PULL_KEYWORDS = ("max_tries_per_object", "initial_backoff", "backoff_cap")  # what shorten_pull_backoff sets
NODE_SLEEPS = (3, 0.5)  # the literal waits of flwr's SuperNode loop that shorten_node_polls shortens


class FlwrChanged(RuntimeError):
    """A flwr internal that fedctl.flower.latency patches is not what it was written against."""

    def __init__(self, what: str):
        super().__init__(f"{what}: fedctl.flower.latency was written against flwr 1.41 and needs updating for "
                         "this flwr version (its waits would silently stay long)")


def _require_source(obj: object, snippets: tuple[str, ...], what: str) -> None:
    """Raise FlwrChanged unless `obj`'s source holds every snippet (the code a patch relies on)."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        raise FlwrChanged(f"{what}: source unavailable") from None
    missing = [s for s in snippets if s not in source]
    if missing:
        raise FlwrChanged(f"{what} no longer contains {', '.join(repr(m) for m in missing)}")


def shorten_pull_backoff(initial: float = PULL_BACKOFF[0], cap: float = PULL_BACKOFF[1]) -> None:
    """Make every object pull in this process retry after `initial` s (doubling up to `cap` s), with no
    limit on the number of tries (flwr's 2 h `max_time` still bounds a pull)."""
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        params = inspect.signature(fn).parameters
        defaults = fn.__kwdefaults__ or {}
        for key in PULL_KEYWORDS:
            if key not in defaults or params[key].kind is not inspect.Parameter.KEYWORD_ONLY:
                raise FlwrChanged(f"flwr's {fn.__qualname__} has no keyword-only argument {key}")
    # the backoff loop reads the three arguments (pull_and_inflate_object_from_tree passes them on)
    _require_source(inflatable_utils.pull_objects, ("delay = initial_backoff", "min(delay * 2, backoff_cap)",
                                                    "tries >= max_tries_per_object"), "flwr's pull_objects")
    _require_source(inflatable_utils.pull_and_inflate_object_from_tree,
                    tuple(f"{k}={k}" for k in PULL_KEYWORDS), "flwr's pull_and_inflate_object_from_tree")
    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        # retries are now ~50× as frequent: bound them by flwr's max_time (2 h) alone, not by its 500 tries
        fn.__kwdefaults__ = {**fn.__kwdefaults__, "initial_backoff": initial, "backoff_cap": cap,
                             "max_tries_per_object": None}
    # modules that imported the functions by name hold the same function objects: nothing more to patch
    for module in (http_grid, start_client_internal, run_clientapp):
        for name in ("pull_objects", "pull_and_inflate_object_from_tree"):
            fn = getattr(module, name, None)
            if fn is not None and fn is not getattr(inflatable_utils, name):
                raise FlwrChanged(f"{module.__name__}.{name} is not flwr's shared function")


class _CappedTime(types.ModuleType):
    """The `time` module, with sleep(s) for s in `durations` (flwr's literal poll waits) shortened to
    `cap` seconds; any other sleep, and everything else, is the real module's."""

    def __init__(self, cap: float, durations: tuple[float, ...] = NODE_SLEEPS) -> None:
        super().__init__("time")
        self.cap, self.durations = cap, durations

    def __getattr__(self, name: str):
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(seconds, self.cap) if seconds in self.durations else seconds)


def shorten_node_polls(seconds: float = POLL_SECONDS) -> None:
    """Make this process's SuperNode loop poll every `seconds` instead of 3 s (idle) and 0.5 s (reply)."""
    from flwr.supernode import start_client_internal

    if getattr(start_client_internal, "time", None) is not _time and not isinstance(start_client_internal.time,
                                                                                   _CappedTime):
        raise FlwrChanged("flwr.supernode.start_client_internal no longer uses the time module")
    _require_source(start_client_internal, tuple(f"time.sleep({d})" for d in NODE_SLEEPS),
                    "flwr.supernode.start_client_internal")
    start_client_internal.time = _CappedTime(seconds)


def shorten_heartbeat(seconds: int = HEARTBEAT_SECONDS) -> None:
    """Declare (and send) this SuperNode's heartbeat every `seconds` instead of 30 s: the SuperLink then
    notices a node that died after 2 × `seconds` (flwr's HEARTBEAT_PATIENCE) and answers its pending
    messages with a NODE_UNAVAILABLE error, so the round leaves that client out 20 s later, not 60 s."""
    from flwr.common import constant
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    if not constant.HEARTBEAT_MIN_INTERVAL <= seconds <= constant.HEARTBEAT_MAX_INTERVAL:
        raise ValueError(f"heartbeat {seconds} s is outside flwr's {constant.HEARTBEAT_MIN_INTERVAL}-"
                         f"{constant.HEARTBEAT_MAX_INTERVAL} s")
    # each module reads its own binding of the constant at call time: the sender's wait, and the interval
    # the node declares to the SuperLink
    uses = ((heartbeat, heartbeat.HeartbeatSender._run, "HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT"),
            (fleet_http_connection, fleet_http_connection, "heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL"))
    for module, user, snippet in uses:
        if not isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), int):
            raise FlwrChanged(f"{module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL")
        _require_source(user, (snippet,), module.__name__)
    for module, _, _ in uses:
        module.HEARTBEAT_DEFAULT_INTERVAL = seconds


def run_supernode(argv: list[str]) -> None:
    """`flower-supernode ARGV` in this process, with the shortened waits."""
    import sys

    from flwr.supernode.cli.flower_supernode import flower_supernode

    shorten_pull_backoff()
    shorten_node_polls()
    shorten_heartbeat()
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


if __name__ == "__main__":
    import sys

    run_supernode(sys.argv[1:])
