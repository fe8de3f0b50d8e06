"""Fuzzing the server with schemathesis, from its own OpenAPI schema, over real HTTP on 127.0.0.1.

Every route, with and without the key: no 5xx, every body valid JSON (but /metrics), and answers that
conform to the documented status codes, content types and schemas. Bounded: a few dozen cases per route,
derandomised so a run is reproducible (well under a minute on a loaded 2-core machine).
"""

from __future__ import annotations

import json

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_helpers import start_server  # noqa: E402
from taskembed.serve import ServerSettings, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tiny, tmp_path_factory):
    np = pytest.importorskip("numpy")
    app = create_app(tiny, ServerSettings(model_names=["tiny"], api_keys=[KEY], max_length=64, max_inputs=8,
                                          max_queue=64, max_request_tokens=512, max_queue_tokens=4096,
                                          max_doc_tokens=400, late_window=32, late_overlap=4,
                                          max_body_bytes=65536))
    try:
        from taskembed import index
        from taskembed.serve.search import register_search

        x = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
        register_search(app, index.VectorIndex.open(
            index.build_index_from_arrays(tmp_path_factory.mktemp("fz") / "ix", x, kind="exact")))
    except ImportError:  # no usearch: the other routes are still fuzzed
        pass
    srv, thread, port = start_server(app, shutdown_timeout_s=5)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(20)


def operations(live) -> list:
    spec = httpx.get(f"{live}/openapi.json", headers=AUTH).json()
    ops = [r.ok() for r in schemathesis.openapi.from_dict(spec).get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/embeddings", "/v1/late_chunking", "/v1/models", "/health", "/metrics"}
    return ops


# Drives hypothesis directly with schemathesis's strategies (its pytest plugin lags pytest releases).
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_5xx_valid_json_and_documented_answers(live, mode):
    from schemathesis import GenerationMode

    seen: dict[str, int] = {}
    for op in operations(live):
        if mode == "negative" and op.method.upper() == "GET" and "{" not in op.path:
            continue  # nothing to get wrong in a GET without parameters

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            seen[case.path] = seen.get(case.path, 0) + 1
            for headers in (AUTH, {}):
                response = case.call(base_url=live, headers=headers, timeout=30)
                where = (case.method, case.path, response.status_code, response.text[:300])
                assert response.status_code < 500, where
                if case.path != "/metrics" or response.status_code != 200:
                    json.loads(response.content)  # strict: invalid UTF-8 or a bare NaN fails here
                if not headers and case.path != "/health":
                    assert response.status_code == 401, where
                case.validate_response(response, checks=CHECKS)

        check()
    assert seen["/v1/embeddings"] >= 10 and seen["/v1/late_chunking"] >= 10, seen  # the cases really ran
