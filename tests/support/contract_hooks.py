"""Schemathesis hooks for the shim's contract test (tests/integration/test_shim_contract.py).

Loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS=tests.support.contract_hooks.

- Every Idempotency-Key sent is derived from the request it is sent with (method, path,
  query and body): the fuzzer reuses generated values across different requests, and reusing
  a key with another body is refused with 422 on purpose (the IETF idempotency-key draft's
  answer), a rule no schema can express. The same request sent again (a check that repeats a
  case) keeps its key, and gets the first answer again, as a client's retry would.
- `other_tenant_data_never_returned`: the run authenticates as tenant acme; no answer may
  contain any of CONTRACT_FORBIDDEN_MARKERS (ids of tenant globex's resources, created
  before the run).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import schemathesis

MARKERS = [m for m in os.environ.get("CONTRACT_FORBIDDEN_MARKERS", "").split(",") if m]


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if not case.headers:
        return
    for name in list(case.headers):
        if name.lower() == "idempotency-key":
            sent = [case.method, case.formatted_path, case.query, case.body]
            digest = hashlib.sha256(json.dumps(sent, default=repr, sort_keys=True).encode())
            case.headers[name] = f"contract-{digest.hexdigest()[:32]}"


@schemathesis.check
def other_tenant_data_never_returned(ctx: Any, response: Any, case: Any) -> bool | None:
    text = response.text or ""
    leaked = [marker for marker in MARKERS if marker in text]
    if leaked:
        raise AssertionError(f"tenant acme was answered tenant globex's data: {leaked}")
    return None
