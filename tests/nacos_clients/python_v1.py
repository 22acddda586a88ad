"""Drives the published Python Nacos client's v1 `NacosClient` (HTTP v1 API) against
Nacos-compatible servers and prints one JSON line per step, for the Nacos front end's
integration test to check.

nacos-sdk-python 3.x ships only its v2 API; `nacos.NacosClient` (HTTP) last shipped in 2.0.x,
so install.sh puts nacos-sdk-python 2.0.11 into a venv of its own for this script.

    python_v1.py roundtrip --write HOST:PORT --read HOST:PORT --service NAME [--group G]
                           [--ip IP] [--port P] [--timeout-s S]
    python_v1.py hold      --write HOST:PORT --service NAME [--group G] [--ip IP] [--port P]
                           [--lease-ms INTERVAL,TIMEOUT,DELETE]

`roundtrip` registers (with the client's heartbeat thread) at the --write node and lists and
subscribes (the client polls instance/list) at the --read node through two separate clients;
`hold` registers and keeps beating until the process is killed (or its stdin closes), so that
the test can watch the instance go.

Every step prints {"client":"python-v1","step":...,"ok":true|false,...}; the first failed step
ends the process with exit code 1.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import nacos
from nacos.listener import SubscribeListener

CLIENT = "python-v1"
# The longest a `hold` process lives if nobody kills it.
HOLD_MAX_S = 600
# The client's heartbeat thread period (seconds) and subscription poll period (seconds).
BEAT_INTERVAL_S = 1
POLL_INTERVAL_S = 1


def emit(step, ok, **extra):
    print(json.dumps({"client": CLIENT, "step": step, "ok": ok, **extra}), flush=True)


def fail(step, error):
    emit(step, False, error=str(error))
    # The client's heartbeat and timer threads would keep the process alive; leave at once.
    os._exit(1)


def connect(addr, workdir, name):
    # With NACOS_USERNAME and NACOS_PASSWORD in the environment the client logs in
    # (POST /nacos/v1/auth/login) and sends its accessToken with every request.
    client = nacos.NacosClient(
        addr,
        logDir=os.path.join(workdir, name),
        username=os.environ.get("NACOS_USERNAME") or None,
        password=os.environ.get("NACOS_PASSWORD") or None,
    )
    client.set_options(default_timeout=5)
    return client


def metadata(lease_ms=None):
    md = {"client": CLIENT}
    if lease_ms:
        interval, timeout, delete = lease_ms
        md["preserved.heart.beat.interval"] = str(interval)
        md["preserved.heart.beat.timeout"] = str(timeout)
        md["preserved.ip.delete.timeout"] = str(delete)
    return md


def register(client, args, port, lease_ms=None):
    # cluster_name stays None, as in the client's own examples: the client then sends the
    # literal string "None" as clusterName, which the server must read as the default cluster.
    ok = client.add_naming_instance(
        args.service,
        args.ip,
        port,
        metadata=metadata(lease_ms),
        group_name=args.group,
        heartbeat_interval=BEAT_INTERVAL_S,
    )
    if not ok:
        raise RuntimeError("server did not answer 'ok'")


def read_until(client, args, want):
    deadline = time.monotonic() + args.timeout_s
    last = "no answer yet"
    while True:
        try:
            answer = client.list_naming_instance(args.service, group_name=args.group)
            ports = sorted(h["port"] for h in answer["hosts"])
            if ports == sorted(want):
                return answer
            last = f"ports {ports}"
        except Exception as e:  # NacosException, HTTP and JSON errors alike
            last = str(e)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"wanted ports {sorted(want)}, last saw {last}")
        time.sleep(0.2)


def roundtrip(args, workdir):
    try:
        writer = connect(args.write, workdir, "writer")
        reader = connect(args.read, workdir, "reader")
    except Exception as e:
        fail("connect", e)
    emit("connect", True, write=args.write, read=args.read)

    p1, p2 = args.port, args.port + 1
    try:
        register(writer, args, p1)
        register(writer, args, p2)
    except Exception as e:
        fail("register", e)
    emit("register", True, ports=[p1, p2])

    try:
        answer = read_until(reader, args, [p1, p2])
    except Exception as e:
        fail("read", e)
    first = answer["hosts"][0]
    emit(
        "read",
        True,
        ports=[p1, p2],
        name=answer.get("name"),
        clusters=answer.get("clusters"),
        healthy=first.get("healthy"),
        enabled=first.get("enabled"),
        ephemeral=first.get("ephemeral"),
        cluster=first.get("clusterName"),
        service_name=first.get("serviceName"),
        instance_id=first.get("instanceId"),
        metadata_client=(first.get("metadata") or {}).get("client"),
    )

    try:
        beat = writer.send_heartbeat(args.service, args.ip, p1, metadata=metadata(), group_name=args.group)
        if beat.get("code") != 10200:
            raise RuntimeError(f"beat answered {beat}")
    except Exception as e:
        fail("beat", e)
    emit("beat", True, answer=beat)

    events = []
    lock = threading.Lock()

    def on_event(event, slc):
        with lock:
            events.append((event, slc.instance["port"]))

    try:
        reader.subscribe(
            SubscribeListener(on_event, "distro-harness"),
            POLL_INTERVAL_S,
            service_name=args.service,
            group_name=args.group,
        )
    except Exception as e:
        fail("subscribe", e)
    # The client's first poll only seeds its cache (with one instance, silently); the next poll
    # reports the other one as ADDED. From then on both are cached and a removal is reported.
    deadline = time.monotonic() + args.timeout_s
    while True:
        with lock:
            added = [port for (event, port) in events if event == "ADDED"]
        if added:
            break
        if time.monotonic() >= deadline:
            fail("subscribe", "no ADDED event from the subscription's polls")
        time.sleep(0.1)
    emit("subscribe", True, added=added)

    try:
        if not writer.remove_naming_instance(args.service, args.ip, p2, group_name=args.group):
            raise RuntimeError("server did not answer 'ok'")
    except Exception as e:
        fail("deregister_one", e)
    emit("deregister_one", True, port=p2)

    try:
        read_until(reader, args, [p1])
    except Exception as e:
        fail("read_after_deregister", e)
    emit("read_after_deregister", True, ports=[p1])

    # The subscription polls instance/list and reports the instance that went as DELETED.
    deadline = time.monotonic() + args.timeout_s
    while True:
        with lock:
            if ("DELETED", p2) in events:
                break
            seen = list(events)
        if time.monotonic() >= deadline:
            fail("push_after_deregister", f"no DELETED event for port {p2}; events {seen}")
        time.sleep(0.1)
    emit("push_after_deregister", True, ports=[p1])

    try:
        if not writer.remove_naming_instance(args.service, args.ip, p1, group_name=args.group):
            raise RuntimeError("server did not answer 'ok'")
    except Exception as e:
        fail("deregister", e)
    emit("deregister", True, port=p1)
    reader.stop_subscribe()
    emit("done", True)


def hold(args, workdir):
    try:
        writer = connect(args.write, workdir, "holder")
        register(writer, args, args.port, args.lease_ms)
    except Exception as e:
        fail("register", e)
    emit("registered", True, service=args.service, port=args.port, pid=os.getpid())

    # Keep beating until the test kills this process. Should the test die first, its end of our
    # stdin closes and we go too, without deregistering.
    def watch_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    time.sleep(HOLD_MAX_S)
    fail("hold", f"not killed within {HOLD_MAX_S} s")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["roundtrip", "hold"])
    parser.add_argument("--write", required=True)
    parser.add_argument("--read")
    parser.add_argument("--service", required=True)
    parser.add_argument("--group", default="DEFAULT_GROUP")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=20000)
    parser.add_argument("--timeout-s", type=float, default=30)
    parser.add_argument("--lease-ms")
    args = parser.parse_args()
    if args.mode == "roundtrip" and not args.read:
        parser.error("roundtrip needs --read")
    if args.lease_ms:
        parts = [int(p) for p in args.lease_ms.split(",")]
        if len(parts) != 3:
            parser.error("--lease-ms takes INTERVAL,TIMEOUT,DELETE")
        args.lease_ms = parts
    return args


def main():
    args = parse_args()
    workdir = tempfile.mkdtemp(prefix="nacos-client-python-v1-")
    if args.mode == "hold":
        hold(args, workdir)
    else:
        # A bound on the whole run, so that a wedged client never outlives its test.
        watchdog = threading.Timer(args.timeout_s * 10, lambda: fail("timeout", "the run took too long"))
        watchdog.daemon = True
        watchdog.start()
        roundtrip(args, workdir)
    os._exit(0)


if __name__ == "__main__":
    main()
