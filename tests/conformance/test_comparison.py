"""The harness's own logic, without Node: reading the suite's result folders and the
direct-vs-dispatcher comparison rule."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.conformance import Check, is_known_reference_gap, parse_results, regressions

GAP = "[implementation] SSE event during 'tools/call' (spec 2026-07-28): CallToolResult: must have required property 'resultType'"


def test_result_folders_become_scenario_check_maps(tmp_path: Path) -> None:
    folder = tmp_path / "server-tools-call-simple-text-2026-12-06T00-47-12-613Z"
    folder.mkdir()
    checks = [
        {"id": "tools-call-simple-text", "status": "SUCCESS"},
        {"id": "sep-x", "status": "FAILURE", "errorMessage": "first"},
        {"id": "sep-x", "status": "WARNING", "errorMessage": "second"},
    ]
    (folder / "checks.json").write_text(json.dumps(checks))
    (tmp_path / "not-a-result").mkdir()
    assert parse_results(tmp_path) == {
        "tools-call-simple-text": {
            "tools-call-simple-text": Check("SUCCESS"),
            "sep-x": Check("FAILURE", "first"),
            "sep-x#2": Check("WARNING", "second"),
        }
    }


def test_a_check_that_passes_directly_must_pass_through_the_dispatcher() -> None:
    direct = {
        "s": {
            "ok": Check("SUCCESS"),
            "info": Check("SUCCESS"),
            "should": Check("WARNING"),
            "bad": Check("FAILURE"),
            "gone": Check("SUCCESS"),
        },
        "whole": {"x": Check("SUCCESS")},
    }
    through = {
        "s": {
            "ok": Check("SUCCESS"),
            "info": Check("INFO"),
            "should": Check("SKIPPED"),
            "bad": Check("FAILURE"),
            "early-stop": Check("FAILURE", "why"),
        }
    }
    assert regressions(direct, through) == [
        "s / should: WARNING directly, SKIPPED: ",
        "s / gone: SUCCESS directly, check missing",
        "s / early-stop: not written directly, FAILURE through: why",
        "whole / x: SUCCESS directly, scenario missing",
    ]


def test_the_reference_servers_resulttype_gap_must_be_repaired_through_the_dispatcher() -> None:
    direct = {
        "tools-call-image": {"wire-schema-valid": Check("FAILURE", GAP)},
        "caching": {"wire-schema-valid": Check("FAILURE", GAP)},
    }
    through = {
        "tools-call-image": {"wire-schema-valid": Check("FAILURE", GAP)},
        "caching": {"wire-schema-valid": Check("FAILURE", GAP)},
    }
    assert regressions(direct, through) == []
    found = regressions(direct, through, must_fix=is_known_reference_gap)
    assert len(found) == 1 and found[0].startswith(
        "tools-call-image / wire-schema-valid: FAILURE directly (a known reference-server gap"
    )
    repaired = {**through, "tools-call-image": {"wire-schema-valid": Check("SUCCESS")}}
    assert regressions(direct, repaired, must_fix=is_known_reference_gap) == []
