"""A long-running ClientApp executor for a SuperNode: fedctl's task is built once per run, not per message.

flwr 1.41 runs every message in a fresh `flwr-clientapp` process (its SuperExec launches one per task
token), so each client of each round pays for importing torch and fedctl and for building the task
(10–20 s on 2 cores), and it offers no long-running ClientApp. What it does offer is the SuperNode's
`--isolation process` mode: the SuperNode launches nothing and an external executor claims its tasks
over the Runtime API. This module is that executor. It imports torch, flwr and fedctl once, then loops:

  AcquireTask (as flwr's SuperExec does) → a task token →
  the same steps `flwr-clientapp --token` runs (pull the message, context, run and FAB; call the
  ClientApp; push the reply and the task output; send heartbeats meanwhile), but in this process,
  with fedctl's ClientApp object, whose cache keeps the built task and model across messages.

A FAB whose ClientApp is not fedctl's is answered with an Error naming it (run a plain SuperNode for
other Flower Apps). Bitwise results are unchanged: each client is seeded from (run seed,
round, client index) and starts from the global weights, whichever process trains it.

    python -m fedctl.flower.warm --runtime-api-address 127.0.0.1:9094 --insecure [--parent-pid PID]

`fedctl train flower-node` starts a SuperNode with `--isolation process` and this executor together.
Hand-written because flwr 1.41 has no equivalent; it uses flwr's own Runtime API client and helpers.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
import zipfile

import tomllib

FEDCTL_CLIENTAPP = "fedctl.flower.client_app:app"
log = logging.getLogger("fedctl.flower.warm")


def fab_clientapp(fab_content: bytes) -> str | None:
    """The `clientapp` component a FAB's pyproject.toml names, or None when it cannot be read."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as z:
            data = tomllib.loads(z.read("pyproject.toml").decode())
        return str(data["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, tomllib.TOMLDecodeError):
        return None


class WarmExecutor:
    """Claims ClientApp tasks from one SuperNode's Runtime API and runs fedctl's in this process."""

    def __init__(self, runtime_api_address: str, *, insecure: bool, root_certificates: str | None = None,
                 poll_seconds: float = 0.2) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        from fedctl.flower.client_app import app  # the warm part: torch, flwr and fedctl imported once

        self.address = runtime_api_address
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.certificates = None if insecure or not root_certificates else open(root_certificates, "rb").read()
        self.poll_seconds = poll_seconds
        self.app = app
        self.tasks_run = 0
        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address, insecure=insecure, root_certificates=self.certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def acquire(self) -> str | None:
        """A task token for one ClientApp message, or None when the SuperNode has none waiting."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
        return res.token if res.HasField("task") and res.token else None

    def serve_forever(self, stop_after: int | None = None) -> None:
        import httpx

        while stop_after is None or self.tasks_run < stop_after:
            try:
                token = self.acquire()
            except httpx.TransportError:  # the SuperNode's API is not up yet, or restarting: ask again
                time.sleep(max(self.poll_seconds, 0.5))
                continue
            if token is None:
                time.sleep(self.poll_seconds)
                continue
            self.run_task(token)
            self.tasks_run += 1

    def run_task(self, token: str) -> None:
        """flwr 1.41's `run_clientapp` (flwr/supernode/runtime/run_clientapp.py) without its process exit."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        retry = make_simple_http_retry_invoker()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure, root_certificates=self.certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=retry,
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        t0 = time.perf_counter()
        try:
            heartbeat.start()
            message, context, _run, fab = pull_task_input(client)
            t1 = time.perf_counter()
            component = fab_clientapp(fab.content)
            if component != FEDCTL_CLIENTAPP:
                raise RuntimeError(f"this SuperNode runs fedctl's warm executor, which serves only "
                                   f"{FEDCTL_CLIENTAPP}; the app's ClientApp is {component}")
            reply = self.app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
            log.info("task %d (%s, round %s): pulled in %.2f s, ClientApp %.2f s", self.tasks_run + 1,
                     message.metadata.message_type, message.metadata.group_id or "-", t1 - t0,
                     time.perf_counter() - t1)
        except Exception as exc:  # as flwr-clientapp: the failure goes back to the server as an Error
            log.exception("ClientApp raised")
            details = f"{type(exc)}:<'{exc}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:
            log.exception("could not push the reply")
        finally:
            retry.max_tries = 1
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()


def _watch_parent(pid: int) -> None:
    """Exit when the SuperNode that owns this executor is gone (as flwr's --parent-pid does)."""
    from flwr.supercore.app_utils import start_parent_process_monitor

    start_parent_process_monitor(pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedctl.flower.warm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                        help="the SuperNode's Runtime API (its --port; the SuperNode runs with --isolation process)")
    parser.add_argument("--insecure", action="store_true", help="the Runtime API is plain HTTP (loopback)")
    parser.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    parser.add_argument("--poll-seconds", type=float, default=0.2, help="how often to ask for a task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedctl-warm %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if args.parent_pid:
        _watch_parent(args.parent_pid)
    from fedctl.flower.latency import shorten_pull_backoff

    shorten_pull_backoff()
    executor = WarmExecutor(args.runtime_api_address, insecure=args.insecure,
                            root_certificates=args.root_certificates, poll_seconds=args.poll_seconds)
    log.info("ready on %s (pid %d)", args.runtime_api_address, os.getpid())
    try:
        executor.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
