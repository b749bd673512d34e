"""Real processes: a type the edge has no plugin for is held in the cloud (the Sync Edge says it
has not converged), and delivered by itself once the plugin is there and the edge restarts."""

from __future__ import annotations

from e2e_world import _tenant
from procs import Proc, cli, wait_until


def test_a_type_the_edge_lacks_is_held_then_delivered_after_install_and_restart(world):
    w = world
    w.start_cloud()
    # the edge box runs without the dashboards plugin (as if it were not installed)
    edge = Proc(w.edge.url, w.tmp / "edge.log", env={"WINSTAR_DISABLE_PLUGINS": "dashboards"})
    w.procs.append(edge.start())
    w.wait_connected()

    def setup(c):
        edge_row = c.find_edge("Plant 7")
        c.assign(edge_row, c.create_entity("dashboard", "Overview", _tenant(c), {"title": "P7"}))
        c.assign(edge_row, c.create_entity("asset", "Boiler", _tenant(c)))

    w.cloud_do(setup)
    names = lambda: {n for _, n, _ in w.edge_entities().values()}  # noqa: E731
    wait_until(lambda: "Boiler" in names(), 30, what="the asset behind the held dashboard")
    downs = cli(w.cloud.url, "edge", "downlinks", "Plant 7", "--json")
    (held,) = [d for d in downs if d["status"] == "held"]
    assert held["type"] == "dashboard" and "no plugin for entity type 'dashboard'" in held["error"]
    assert not [d for d in downs if d["status"] == "failed"]
    assert "Overview" not in names()

    # a Sync Edge to that edge does not look converged while the dashboard is held
    cli(w.cloud.url, "edge", "sync", "Plant 7", "--json")
    wait_until(
        lambda: cli(w.cloud.url, "edge", "show", "Plant 7", "--json")["sync"]["state"] == "failed",
        30,
        what="the sync's outcome",
    )
    shown = cli(w.cloud.url, "edge", "show", "Plant 7", "--json")
    assert shown["sync"]["held"] >= 1 and shown["held"] >= 1

    # the plugin is installed: the edge restarts, announces the type, and gets what was held
    edge.stop()
    w.procs.append(Proc(w.edge.url, w.tmp / "edge2.log").start())
    wait_until(lambda: "Overview" in names(), 60, what="the held dashboard after the restart")
    wait_until(
        lambda: (
            not [
                d
                for d in cli(w.cloud.url, "edge", "downlinks", "Plant 7", "--json")
                if d["status"] in ("held", "pending", "failed")
            ]
        ),
        30,
        what="every downlink delivered",
    )
