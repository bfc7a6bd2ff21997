import orjson

from edgefleet.dispatcher.paths.cache import ResultCache, final_result


def test_key_is_canonical_over_argument_order() -> None:
    assert ResultCache.key("kv.get", {"a": 1, "b": [1, 2]}) == ResultCache.key("kv.get", {"b": [1, 2], "a": 1})
    assert ResultCache.key("kv.get", {"a": 1}) != ResultCache.key("kv.other", {"a": 1})


def test_entries_expire_after_their_ttl(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    monkeypatch.setattr("edgefleet.dispatcher.paths.cache.time.monotonic", lambda: now[0])
    cache = ResultCache(10)
    key = ResultCache.key("kv.get", {"k": "x"})
    assert key is not None
    cache.put(key, 5.0, b'{"content":[]}')
    assert cache.get(key) == b'{"content":[]}'
    now[0] += 6
    assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_final_result_from_json_and_sse_and_errors_are_not_cached() -> None:
    ok = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}], "isError": False}}
    assert orjson.loads(final_result(orjson.dumps(ok), stream=False) or b"") == ok["result"]
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    sse = (
        b"event: message\ndata: " + orjson.dumps(progress) + b"\n\nevent: message\ndata: " + orjson.dumps(ok) + b"\n\n"
    )
    assert orjson.loads(final_result(sse, stream=True) or b"") == ok["result"]
    crlf = sse.replace(b"\n", b"\r\n")  # the MCP SDK frames events with CRLF
    assert orjson.loads(final_result(crlf, stream=True) or b"") == ok["result"]
    failed = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": True}}
    assert final_result(orjson.dumps(failed), stream=False) is None
    assert final_result(b"not json", stream=False) is None
    assert (
        final_result(orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}), stream=False)
        is None
    )
