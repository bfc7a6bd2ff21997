"""`bench_profile --sampler perf` reads `perf script` output: shares by shared object, and by
component from the innermost Python frame (CPython >= 3.12 perf trampolines)."""

from __future__ import annotations

from edgefleet.dispatcher.devtools import perf_samples
from edgefleet.dispatcher.devtools.bench_profile import classify

LIB = "/usr/lib/python3.12/libpython3.12.so.1.0"
UVLOOP = "/venv/lib/python3.12/site-packages/uvloop/loop.cpython-312-x86_64-linux-gnu.so"
SRC = "/repo/build/editable/edgefleet"

# Four samples as `perf script -F ip,sym,dso` prints them (a header line where -F asks for one).
SCRIPT = f"""python 28107
\t          10e790 _PyEval_EvalFrameDefault ({LIB})
\t    7f7213e6f4da py::DirectPath._attempt:{SRC}/dispatcher/paths/direct.py (/tmp/perf-28107.map)
\t    7f7213e6f000 py::ToolCalls.handle:{SRC}/dispatcher/mcp/calls.py (/tmp/perf-28107.map)

\tffffffff816daedd vfs_writev ([kernel.kallsyms])
\t           fde9d __GI___writev (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          154c19 uv__writev (inlined)
\t          154c19 uv__try_write ({UVLOOP})
\t          110811 _PyEval_EvalFrameDefault ({LIB})
\t    7f7213e6e4a7 py::Event.set:/usr/lib/python3.12/asyncio/locks.py (/tmp/perf-28107.map)
\t    7f7213e6e400 py::AuditLog.record:{SRC}/dispatcher/security/audit.py (/tmp/perf-28107.map)

\t          154c19 uv__writev (inlined)
\t          154c19 uv__try_write ({UVLOOP})

\t           1b8b86 insertdict ({LIB})
\t    7f7213e6fade py::line:{SRC}/shared/logsetup.py (/tmp/perf-28107.map)
"""


def samples() -> list[perf_samples.Sample]:
    return list(perf_samples.parse(SCRIPT.splitlines(keepends=True)))


def test_each_blank_line_ends_a_sample_and_inlined_frames_take_their_callers_object() -> None:
    parsed = samples()
    assert len(parsed) == 4
    assert parsed[0].frames[1] == (
        "py::DirectPath._attempt:" + SRC + "/dispatcher/paths/direct.py",
        "/tmp/perf-28107.map",
    )
    assert parsed[2].frames == [("uv__try_write", UVLOOP)]


def test_shares_by_object_count_where_the_cpu_was_not_who_called() -> None:
    rows = {name: (count, share) for name, count, share in perf_samples.by_object(samples())}
    interpreter = perf_samples.object_of(LIB)
    assert rows[interpreter] == (2, 0.5)
    assert rows[perf_samples.object_of("[kernel.kallsyms]")] == (1, 0.25)
    assert rows[perf_samples.object_of(UVLOOP)] == (1, 0.25)
    assert perf_samples.object_of("/somewhere/_other.so") == "_other.so"


def test_components_come_from_the_innermost_python_frame_past_stdlib_helpers() -> None:
    parsed = samples()
    assert parsed[0].python_stack() == (
        f"ToolCalls.handle ({SRC}/dispatcher/mcp/calls.py);DirectPath._attempt ({SRC}/dispatcher/paths/direct.py)"
    )
    rows = {name: count for name, count, _ in perf_samples.by_component(parsed, classify)}
    # The sample without Python frames is left out; asyncio's Event.set counts for its caller.
    assert rows == {"direct path": 1, "audit record + writer": 1, "log line (logging, JSON formatter)": 1}


def test_no_python_frames_give_no_components() -> None:
    only_native = [s for s in samples() if not s.python_stack()]
    assert only_native and perf_samples.by_component(only_native, classify) == []
