"""Row ``throughput``: ProvisionDevice calls a second to `panostage authority serve` in its own process, with
real key generation; boto3 clients on ``--threads`` threads in this process, ``--calls`` in all, and the
server's CPU per call.  Goal: >= 200/s."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from benchrows.kit import KEY, REGION, SECRET, Row, authority, cpu_spent, make_row


def bench_throughput(calls: int, threads: int) -> list[Row]:
    import boto3
    import psutil
    from botocore.config import Config

    from agent.aws.model import new_botocore_session

    with tempfile.TemporaryDirectory() as tmp, authority(Path(tmp)) as info:
        session = boto3.Session(
            botocore_session=new_botocore_session(),
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )
        config = Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=threads)
        per_thread = calls // threads
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                client = session.client("panorama", endpoint_url=info["endpoint_url"], config=config)
                client.list_devices(MaxResults=1)
                barrier.wait(timeout=60)
                for n in range(per_thread):
                    client.provision_device(Name=f"bench-{index}-{n}")
            except BaseException as exc:  # noqa: BLE001 - whatever ends a worker ends the run, said once
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        server = psutil.Process(info["pid"])
        barrier.wait(timeout=60)
        start, cpu0 = time.perf_counter(), server.cpu_times()
        for worker in workers:
            worker.join()
        elapsed, cpu1 = time.perf_counter() - start, server.cpu_times()
        if errors:
            raise RuntimeError(f"throughput run failed: {errors[0]!r}")
    total = per_thread * threads
    rate = total / elapsed
    server_ms = cpu_spent(cpu0, cpu1) * 1000 / total
    return [
        make_row(
            f"authority ProvisionDevice/s ({threads} client threads)",
            f"{rate:.0f}/s",
            ">= 200/s",
            rate >= 200,
            {
                "calls": total,
                "seconds": round(elapsed, 3),
                "per_second": round(rate, 1),
                "server_cpu_ms_per_call": round(server_ms, 3),
            },
        )
    ]
