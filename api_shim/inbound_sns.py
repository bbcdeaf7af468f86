"""The network side of SNS verification: fetching signing certificates, confirming
subscriptions. Callers check the URL with `connectors.ses.is_sns_url` first, so these requests
only ever go to SNS endpoints over https.
"""

from __future__ import annotations

import logging

import httpx

from api_shim.errors import Unavailable

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
MAX_CERTIFICATE_BYTES = 64 * 1024
# SigningCertURL -> PEM. SNS signs with a handful of certificates per region, rotated rarely.
MAX_CACHED = 64
_certificates: dict[str, bytes] = {}


async def _get(url: str, what: str) -> httpx.Response:
    try:
        # No redirects: the URL was checked, wherever it might redirect to was not.
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        log.warning("fetching the SNS %s failed: %s", what, exc)
        raise Unavailable(f"the SNS {what} could not be fetched; retry later") from exc
    if response.status_code != 200:
        log.warning("fetching the SNS %s answered HTTP %s", what, response.status_code)
        raise Unavailable(f"the SNS {what} could not be fetched; retry later")
    return response


async def certificate(url: str) -> bytes:
    """The PEM certificate at a SigningCertURL (already checked to be an SNS endpoint)."""
    cached = _certificates.get(url)
    if cached is not None:
        return cached
    pem = (await _get(url, "signing certificate")).content
    if len(pem) > MAX_CERTIFICATE_BYTES or not pem.lstrip().startswith(b"-----BEGIN CERTIFICATE"):
        raise Unavailable("the SNS signing certificate is not a PEM certificate")
    if len(_certificates) >= MAX_CACHED:
        del _certificates[next(iter(_certificates))]
    _certificates[url] = pem
    return pem


async def confirm_subscription(url: str) -> None:
    """Visit a (verified) SubscriptionConfirmation's SubscribeURL, which confirms it."""
    await _get(url, "subscription confirmation")
    log.info("confirmed an SNS subscription: %s", url.split("?", 1)[0])
