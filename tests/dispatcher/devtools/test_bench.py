"""`edgefleet bench` runs end to end against real processes and its JSON carries what runs are
compared by. A functional test only: no figure is asserted (timings belong to the tool)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from edgefleet.dispatcher.devtools.bench import parse_variant

pytestmark = pytest.mark.integration

ROLES = {"dispatcher", "agent", "client", "redis"}


@pytest.mark.timeout(400)
def test_the_bench_runs_every_scenario_and_reports_cpu_per_call_as_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.dispatcher", "bench"]
        + ["--concurrency", "1,2", "--seconds", "0.3", "--rounds", "1", "--json"]
        + ["--variant", "noaudit=EDGEFLEET_AUDIT=false"],
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout)
    assert result["machine"]["cpus"] >= 1 and result["settings"]["trace_ratio"] == 0.1
    assert [v["label"] for v in result["settings"]["variants"]] == ["dispatcher", "noaudit"]
    cells = {(c["scenario"], c["sessions"], c["path"]): c for c in result["cells"]}
    assert set(cells) == {
        (scenario, sessions, path)
        for scenario in ("2026", "2025", "bus")
        for sessions in (1, 2)
        for path in ("direct", "dispatcher", "noaudit")
    }
    for cell in cells.values():
        # Every call succeeded, through the path the scenario names (the bench checks the route header).
        assert cell["calls"] > 0 and cell["errors"] == 0, cell
        assert set(cell["cpu_ms_per_call"]) == ROLES and all(v >= 0 for v in cell["cpu_ms_per_call"].values())
        assert cell["p50_ms"] > 0 and cell["p99_ms"] >= cell["p50_ms"] and len(cell["rounds"]) == 1
    ratios = {(r["scenario"], r["sessions"], r["path"]): r for r in result["ratios"]}
    assert set(ratios) == {k for k in cells if k[2] != "direct"}
    assert all(r["throughput_via_over_direct"] > 0 for r in ratios.values())
    assert set(result["idle_cpu_percent"]) == set(result["first_call"]) == {"dispatcher", "noaudit"}
    assert result["spans_received"] >= 0


def test_variants_are_settings_a_source_tree_or_an_interpreter() -> None:
    variant = parse_variant("lean=EDGEFLEET_AUDIT=false,EDGEFLEET_RATE_LIMIT=")
    assert variant.label == "lean" and variant.env == {"EDGEFLEET_AUDIT": "false", "EDGEFLEET_RATE_LIMIT": ""}
    assert parse_variant("before=src:/tmp/tree").src == "/tmp/tree"
    assert parse_variant("py313=python:/opt/v313/bin/python").python == "/opt/v313/bin/python"
    for bad in ("direct", "=X=1", "x=NOEQUALS"):
        with pytest.raises(ValueError):
            parse_variant(bad)
