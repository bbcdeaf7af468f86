"""AWS Signature Version 4 for our httpx connectors (SES now; SNS can reuse it).

We sign with botocore's signer rather than a client: the connectors keep the shared httpx
client, error mapping and timeouts every HTTP provider has, and only borrow the part that is
easy to get subtly wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import SecretStr


def credentials(
    access_key_id: str, secret_access_key: SecretStr, session_token: SecretStr | None = None
) -> Credentials:
    token = session_token.get_secret_value() if session_token else None
    return Credentials(access_key_id, secret_access_key.get_secret_value(), token)


def sign(
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    region: str,
    service: str,
    credentials: Credentials,
) -> dict[str, str]:
    """The headers to send: `headers` plus X-Amz-Date, Authorization (and the session token).

    Every header passed in is signed, so send exactly these and exactly `body`; the Host header
    is signed from `url`, which is what httpx sends for it.
    """
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())
