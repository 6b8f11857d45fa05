"""fedctl.flower.latency: each flwr patch has its effect (the waits flwr's own code then uses) and refuses
loudly a flwr whose internals are not what it patches."""

from __future__ import annotations

import threading
import types

import pytest
from flwr.common import constant
from flwr.supercore import heartbeat
from flwr.supercore.inflatable import inflatable_utils
from flwr.supernode import fleet_http_connection, start_client_internal

from fedctl.flower import latency


@pytest.fixture
def restore(monkeypatch):
    """Undo every patch after the test (they change flwr for the whole process)."""
    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(fn, "__kwdefaults__", dict(fn.__kwdefaults__))
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)
    for module in (heartbeat, fleet_http_connection):
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    return monkeypatch


class RecordingEvent:
    """threading.Event whose wait() records its timeout and returns at once."""

    waits: list[float] = []

    def __init__(self):
        self._flag = False

    def is_set(self):
        return self._flag

    def set(self):
        self._flag = True

    def wait(self, timeout=None):
        RecordingEvent.waits.append(timeout)
        return self._flag


def pull_waits(monkeypatch, failures: int) -> list[float]:
    """The waits flwr's pull_objects takes for an object unavailable `failures` times (no jitter)."""
    RecordingEvent.waits = []
    monkeypatch.setattr(inflatable_utils, "threading", types.SimpleNamespace(Event=RecordingEvent, Lock=threading.Lock))
    monkeypatch.setattr(inflatable_utils, "random", types.SimpleNamespace(uniform=lambda a, b: 0.0))
    calls = []

    def pull(object_id):
        calls.append(object_id)
        if len(calls) <= failures:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["o"], pull) == {"o": b"content"}
    assert len(calls) == failures + 1
    return RecordingEvent.waits


def test_pull_backoff_is_what_flwr_then_waits_and_tries_are_unlimited(restore):
    assert pull_waits(restore, 5) == [1, 2, 4, 8, 10]  # flwr 1.41 as shipped: 25 s for 5 misses
    latency.shorten_pull_backoff()
    assert pull_waits(restore, 6) == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.2, 0.2])
    # flwr's 500-try limit is off (max_time still bounds a pull): 600 misses still succeed
    assert len(pull_waits(restore, 600)) == 600
    assert inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"] == 0.02


def test_node_polls_shorten_only_flwrs_own_waits(restore):
    slept = []
    restore.setattr(latency._time, "sleep", slept.append)
    latency.shorten_node_polls(0.1)
    start_client_internal.time.sleep(3)  # the idle poll, as flwr's loop calls it
    start_client_internal.time.sleep(0.5)  # the reply wait
    start_client_internal.time.sleep(7)  # any other sleep is left alone
    assert slept == [0.1, 0.1, 7]
    assert start_client_internal.time.monotonic is latency._time.monotonic


def test_heartbeat_interval_is_what_the_sender_waits(restore):
    def sender_wait() -> float:
        sender = heartbeat.HeartbeatSender(lambda: True)
        event = RecordingEvent()
        RecordingEvent.waits = []
        original = event.wait
        event.wait = lambda timeout=None: (original(timeout), event.set())[0]  # one beat, then stop
        sender._stop_event = event
        restore.setattr(heartbeat, "random", types.SimpleNamespace(uniform=lambda a, b: 0.0))
        sender._run()
        return RecordingEvent.waits[0]

    expected = lambda interval: (interval - constant.HEARTBEAT_CALL_TIMEOUT) * constant.HEARTBEAT_BASE_MULTIPLIER  # noqa: E731
    assert sender_wait() == pytest.approx(expected(30))
    latency.shorten_heartbeat(10)
    assert sender_wait() == pytest.approx(expected(10)) == pytest.approx(4.0)
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 10
    with pytest.raises(ValueError, match="outside flwr's"):
        latency.shorten_heartbeat(5)


def test_a_missing_or_changed_target_raises(restore):
    fn = inflatable_utils.pull_objects
    restore.setattr(fn, "__kwdefaults__", {k: v for k, v in fn.__kwdefaults__.items() if k != "max_tries_per_object"})
    with pytest.raises(latency.FlwrChanged, match="max_tries_per_object"):
        latency.shorten_pull_backoff()
    restore.setattr(fn, "__kwdefaults__", {**fn.__kwdefaults__, "max_tries_per_object": 500})
    restore.setattr(latency.inspect, "getsource", lambda obj: "def f(): time.sleep(5)")
    with pytest.raises(latency.FlwrChanged, match="no longer contains"):
        latency.shorten_pull_backoff()
    with pytest.raises(latency.FlwrChanged, match=r"time.sleep\(3\)"):
        latency.shorten_node_polls()
    restore.undo()
    restore.delattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL")
    with pytest.raises(latency.FlwrChanged, match="HEARTBEAT_DEFAULT_INTERVAL"):
        latency.shorten_heartbeat()
    restore.undo()
    restore.setattr(start_client_internal, "time", types.SimpleNamespace(sleep=print))
    with pytest.raises(latency.FlwrChanged, match="time module"):
        latency.shorten_node_polls()
