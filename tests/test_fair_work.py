"""The fair executor's rotation and limits, and the summarized warnings, on their own."""

from __future__ import annotations

import asyncio
import logging
import threading

from winstar_core.transport.fair import FairExecutor
from winstar_core.transport.logsummary import LogSummary


def test_jobs_rotate_across_tenants_then_edges_and_a_tenant_holds_at_most_half_the_workers():
    executor = FairExecutor(workers=2)  # one worker per tenant at most
    order: list[str] = []
    gate = threading.Event()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()

    def job(tenant: str, label: str) -> None:
        with lock:
            order.append(label)  # the order in which jobs start
            running[tenant] = running.get(tenant, 0) + 1
            peak[tenant] = max(peak.get(tenant, 0), running[tenant])
        gate.wait(5)
        with lock:
            running[tenant] -= 1

    async def main() -> None:
        jobs = [executor.run("A", f"A{i % 3}", job, "A", f"A{i % 3}-{i}") for i in range(9)]
        jobs.append(executor.run("B", "B0", job, "B", "B0-0"))
        tasks = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0.2)
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    executor.shutdown()
    assert peak["A"] == 1  # tenant A never held both workers
    assert order.index("B0-0") == 1  # B started beside A's first job, not after A's nine
    a_edges = [label.split("-")[0] for label in order if label.startswith("A")]
    assert a_edges[:3] == ["A0", "A1", "A2"]  # A's edges take turns


def test_a_job_whose_caller_gave_up_before_it_started_is_dropped():
    executor = FairExecutor(workers=1, per_tenant=1)
    ran: list[str] = []
    gate = threading.Event()

    async def main() -> None:
        first = asyncio.ensure_future(executor.run("A", "e", lambda: gate.wait(5) and ran.append("first")))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(executor.run("A", "e", lambda: ran.append("second")))
        await asyncio.sleep(0.05)
        second.cancel()  # its session ended while it waited
        gate.set()
        await first
        await asyncio.sleep(0.1)

    asyncio.run(main())
    executor.shutdown()
    assert ran == ["first"]


def test_an_exception_reaches_the_caller():
    executor = FairExecutor(workers=1)

    def boom() -> None:
        raise ValueError("bad")

    async def main() -> str:
        try:
            await executor.run("A", "e", boom)
        except ValueError as exc:
            return str(exc)
        return "no error"

    assert asyncio.run(main()) == "bad"
    executor.shutdown()


def test_repeated_warnings_are_summarized(caplog):
    now = [0.0]
    summary = LogSummary(logging.getLogger("winstar-test"), every=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="winstar-test")
    for i in range(1_000):
        summary.warning("rejected:x", f"rejected event {i}")
    summary.warning("other", "another kind")
    now[0] = 11.0
    summary.warning("rejected:x", "rejected event 1000")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "rejected event 0",
        "another kind",
        "rejected event 1000 (and 999 more like it in the last 11s)",
    ]
