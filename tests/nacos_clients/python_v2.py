"""Drives the published Python Nacos client's v2 API (nacos-sdk-python 3.x, gRPC) against
Nacos-compatible servers and prints one JSON line per step, for the Nacos front end's
integration test to check.

    python_v2.py roundtrip --write HOST:PORT --read HOST:PORT --service NAME [--group G]
                           [--ip IP] [--port P] [--timeout-s S]
    python_v2.py hold      --write HOST:PORT --service NAME [--group G] [--ip IP] [--port P]
                           [--lease-ms INTERVAL,TIMEOUT,DELETE]

Addresses are the servers' HTTP addresses, as a user configures them; the client talks gRPC to
port + 1000. `roundtrip` registers at the --write node and reads and subscribes at the --read node
through two separate clients; `hold` registers and keeps its connection until the process is
killed (or its stdin closes), so that the test can watch the instance go.

Every step prints {"client":"python-v2","step":...,"ok":true|false,...}; the first failed step
ends the process with exit code 1.
"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time

from v2.nacos import ClientConfigBuilder, NacosNamingService
from v2.nacos.naming.model.naming_param import (
    BatchRegisterInstanceParam,
    DeregisterInstanceParam,
    ListInstanceParam,
    ListServiceParam,
    RegisterInstanceParam,
    SubscribeServiceParam,
)

CLIENT = "python-v2"
# The longest a `hold` process lives if nobody kills it.
HOLD_MAX_S = 600


def emit(step, ok, **extra):
    print(json.dumps({"client": CLIENT, "step": step, "ok": ok, **extra}), flush=True)


def fail(step, error):
    emit(step, False, error=str(error))
    # The client's own tasks would keep the event loop alive; leave at once.
    os._exit(1)


async def connect(addr, app, workdir):
    # A cache and log directory of the run's own, and no cache loaded at start, so that
    # nothing from disk can stand in for what the server answers.
    builder = (
        ClientConfigBuilder()
        .server_address(addr)
        .namespace_id("")
        .cache_dir(os.path.join(workdir, app, "cache"))
        .log_dir(os.path.join(workdir, app, "log"))
        .load_cache_at_start(False)
        .timeout_ms(5000)
    )
    # With NACOS_USERNAME and NACOS_PASSWORD in the environment the client logs in
    # (POST /nacos/v1/auth/users/login) and sends its accessToken with every request.
    if os.environ.get("NACOS_USERNAME") and os.environ.get("NACOS_PASSWORD"):
        builder = builder.username(os.environ["NACOS_USERNAME"]).password(os.environ["NACOS_PASSWORD"])
    config = builder.build()
    config.app_name = app
    return await NacosNamingService.create_naming_service(config)


def instance(args, port, lease_ms=None):
    metadata = {"client": CLIENT}
    if lease_ms:
        interval, timeout, delete = lease_ms
        metadata["preserved.heart.beat.interval"] = str(interval)
        metadata["preserved.heart.beat.timeout"] = str(timeout)
        metadata["preserved.ip.delete.timeout"] = str(delete)
    return RegisterInstanceParam(
        service_name=args.service, group_name=args.group, ip=args.ip, port=port, metadata=metadata
    )


async def read_until(client, args, service, want):
    """Lists the service's instances at the read node until exactly `want` ports are there."""
    deadline = time.monotonic() + args.timeout_s
    last = "no answer yet"
    while True:
        try:
            hosts = await client.list_instances(
                ListInstanceParam(service_name=service, group_name=args.group, subscribe=False, healthy_only=None)
            )
            ports = sorted(h.port for h in hosts)
            if ports == sorted(want):
                return hosts
            last = f"ports {ports}"
        except Exception as e:  # the client raises NacosException and plain errors alike
            last = str(e)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"wanted ports {sorted(want)}, last saw {last}")
        await asyncio.sleep(0.2)


class Recorder:
    """Remembers every instance list a subscription delivered."""

    def __init__(self):
        self.events = []

    async def __call__(self, instances):
        self.events.append(sorted(i.port for i in (instances or [])))

    async def wait_for(self, want, timeout_s):
        deadline = time.monotonic() + timeout_s
        while not (self.events and self.events[-1] == sorted(want)):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"wanted ports {sorted(want)}, events {self.events}")
            await asyncio.sleep(0.1)


async def roundtrip(args, workdir):
    try:
        writer = await connect(args.write, "distro-writer", workdir)
        reader = await connect(args.read, "distro-reader", workdir)
    except Exception as e:
        fail("connect", e)
    if not await writer.server_health() or not await reader.server_health():
        fail("connect", "client reports the server unhealthy")
    emit("connect", True, write=args.write, read=args.read)

    # Two instances of one service from one connection: only a batch can publish both
    # (Nacos 2.x keeps one instance per service per connection).
    p1, p2 = args.port, args.port + 1
    try:
        ok = await writer.batch_register_instances(
            BatchRegisterInstanceParam(
                service_name=args.service, group_name=args.group, instances=[instance(args, p1), instance(args, p2)]
            )
        )
        if not ok:
            raise RuntimeError("server answered failure")
    except Exception as e:
        fail("register", e)
    emit("register", True, ports=[p1, p2])

    try:
        hosts = await read_until(reader, args, args.service, [p1, p2])
    except Exception as e:
        fail("read", e)
    first = hosts[0]
    emit(
        "read",
        True,
        ports=[p1, p2],
        healthy=first.healthy,
        enabled=first.enabled,
        ephemeral=first.ephemeral,
        cluster=first.clusterName,
        service_name=first.serviceName,
        instance_id=first.instanceId,
        metadata_client=first.metadata.get("client"),
    )

    recorder = Recorder()
    try:
        await reader.subscribe(
            SubscribeServiceParam(service_name=args.service, group_name=args.group, subscribe_callback=recorder)
        )
        # The subscription's first delivery may come from the cache filled by the read above;
        # what counts is that the callback is wired: the change below must arrive by push.
    except Exception as e:
        fail("subscribe", e)
    emit("subscribe", True, ports=[p1, p2])

    # Python's batch deregistration publishes the remaining set again.
    try:
        await writer.batch_deregister_instances(
            BatchRegisterInstanceParam(service_name=args.service, group_name=args.group, instances=[instance(args, p2)])
        )
    except Exception as e:
        fail("deregister_one", e)
    emit("deregister_one", True, port=p2)
    try:
        await recorder.wait_for([p1], args.timeout_s)
    except Exception as e:
        fail("push_after_deregister", e)
    emit("push_after_deregister", True, ports=[p1])
    try:
        await read_until(reader, args, args.service, [p1])
    except Exception as e:
        fail("read_after_deregister", e)
    emit("read_after_deregister", True, ports=[p1])

    # A single instance (InstanceRequest) of a second service.
    single = args.service + "-single"
    p3 = args.port + 2
    try:
        ok = await writer.register_instance(
            RegisterInstanceParam(service_name=single, group_name=args.group, ip=args.ip, port=p3)
        )
        if not ok:
            raise RuntimeError("server answered failure")
        await read_until(reader, args, single, [p3])
    except Exception as e:
        fail("register_single", e)
    emit("register_single", True, service=single, port=p3)

    try:
        services = await reader.list_services(ListServiceParam(group_name=args.group, page_no=1, page_size=100))
        if args.service not in services.services or single not in services.services:
            raise RuntimeError(f"{services.services} lacks {args.service} or {single}")
    except Exception as e:
        fail("list_services", e)
    emit("list_services", True, count=services.count, services=services.services)

    try:
        ok = await writer.deregister_instance(
            DeregisterInstanceParam(service_name=single, group_name=args.group, ip=args.ip, port=p3)
        )
        if not ok:
            raise RuntimeError("server answered failure")
    except Exception as e:
        fail("deregister_single", e)
    emit("deregister_single", True, service=single, port=p3)

    try:
        await writer.batch_deregister_instances(
            BatchRegisterInstanceParam(service_name=args.service, group_name=args.group, instances=[instance(args, p1)])
        )
    except Exception as e:
        fail("deregister", e)
    emit("deregister", True, port=p1)

    await writer.shutdown()
    await reader.shutdown()
    emit("done", True)


async def hold(args, workdir):
    try:
        writer = await connect(args.write, "distro-holder", workdir)
    except Exception as e:
        fail("connect", e)
    emit("connect", True, write=args.write)
    try:
        ok = await writer.register_instance(instance(args, args.port, args.lease_ms))
        if not ok:
            raise RuntimeError("server answered failure")
    except Exception as e:
        fail("register", e)
    emit("registered", True, service=args.service, port=args.port, pid=os.getpid())

    # Keep the connection (and so the instance) until the test kills this process. Should the
    # test die first, its end of our stdin closes and we go too, without deregistering.
    def watch_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    await asyncio.sleep(HOLD_MAX_S)
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
    workdir = tempfile.mkdtemp(prefix="nacos-client-python-v2-")
    if args.mode == "hold":
        asyncio.run(hold(args, workdir))
        return
    # A bound on the whole run, so that a wedged client never outlives its test.
    try:
        asyncio.run(asyncio.wait_for(roundtrip(args, workdir), args.timeout_s * 10))
    except asyncio.TimeoutError:
        fail("timeout", f"the run took longer than {args.timeout_s * 10} s")
    os._exit(0)


if __name__ == "__main__":
    main()
