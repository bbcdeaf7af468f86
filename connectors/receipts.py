"""Provider receipts: what a provider later tells us about a message it accepted.

Providers that report delivery (SendGrid and Mailgun events, SES notifications, Twilio status
callbacks, WhatsApp statuses) get a `parse_receipts` function in their module, turning the
provider's payload into Receipts. Connectors pass our notification id to the provider as
custom metadata where the API allows, so a receipt names its notification directly; otherwise
it is matched by `provider_message_id`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

ReceiptStatus = Literal["delivered", "bounced", "failed", "read"]


class Receipt(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    # Unique per provider event: receipts are deduplicated on (provider, provider_event_id).
    provider_event_id: str
    status: ReceiptStatus
    provider_message_id: str | None = None
    notification_id: str | None = None
    tenant_id: str | None = None
    reason: str | None = None
    occurred_at: int  # epoch ms


def receipt_record(receipt: Receipt) -> dict[str, object]:
    """The ProviderReceipt event (schemas/provider_receipt.avsc) for notifications.receipts,
    keyed by notification id. A receipt that names no notification cannot be applied."""
    if not receipt.notification_id:
        raise ValueError(
            f"{receipt.provider} receipt {receipt.provider_event_id} names no notification"
        )
    return receipt.model_dump()
