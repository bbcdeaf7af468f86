"""Schemathesis hooks for the shim's contract test (tests/integration/test_shim_contract.py).

Loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS=tests.support.contract_hooks.

- Every generated Idempotency-Key is made unique: the fuzzer reuses values across different
  requests, and reusing a key with another body is refused with 422 on purpose (the IETF
  idempotency-key draft's answer), a rule no schema can express.
- `other_tenant_data_never_returned`: the run authenticates as tenant acme; no answer may
  contain any of CONTRACT_FORBIDDEN_MARKERS (ids of tenant globex's resources, created
  before the run).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis

MARKERS = [m for m in os.environ.get("CONTRACT_FORBIDDEN_MARKERS", "").split(",") if m]


@schemathesis.hook
def map_headers(ctx: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    if headers:
        for name in list(headers):
            if name.lower() == "idempotency-key":
                headers[name] = f"contract-{uuid.uuid4().hex}"
    return headers


@schemathesis.check
def other_tenant_data_never_returned(ctx: Any, response: Any, case: Any) -> bool | None:
    text = response.text or ""
    leaked = [marker for marker in MARKERS if marker in text]
    if leaked:
        raise AssertionError(f"tenant acme was answered tenant globex's data: {leaked}")
    return None
