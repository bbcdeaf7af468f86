"""WhatsApp through Twilio's Messages API, with the twilio SDK (docs/connectors/twilio.md).

The same resource, transport, error mapping and status callbacks as connectors.twilio_sms;
what differs is the `whatsapp:` address prefix and the content:

- `message.data["whatsapp_template"]["content_sid"]` (a Content API template, `HX...`) with
  optional `content_variables` (an object, or its JSON string) sends a template: the only
  kind WhatsApp delivers outside the 24-hour customer service window;
- otherwise a free-form Body, with the first of `message.media_urls` as MediaUrl.
"""

from __future__ import annotations

import json
from typing import Any

from connectors.base import OutboundMessage
from connectors.errors import PermanentDeliveryError
from connectors.receipts import Receipt
from connectors.twilio_sms import TwilioSmsConnector
from connectors.twilio_sms import parse_receipts as parse_twilio_receipts

PREFIX = "whatsapp:"


class TwilioWhatsAppConnector(TwilioSmsConnector):
    channel = "whatsapp"
    name = "twilio_whatsapp"
    # Twilio's default per WhatsApp sender, text and media; it queues faster sends.
    rate_per_sec = 80.0
    max_body_len = 1600

    def address(self, number: str) -> str:
        return number if number.startswith(PREFIX) else PREFIX + number

    def content(self, message: OutboundMessage) -> dict[str, Any]:
        template = message.data.get("whatsapp_template")
        if template is not None:
            return content_template(template)
        content: dict[str, Any] = {"body": message.text}
        if message.media_urls:
            # One media item per WhatsApp message, as with the Cloud API.
            content["media_url"] = message.media_urls[:1]
        return content


def content_template(template: Any) -> dict[str, Any]:
    sid = template.get("content_sid") if isinstance(template, dict) else None
    if not isinstance(sid, str) or not sid:
        # Twilio sends WhatsApp templates only by Content SID; a name-only template (the Cloud
        # API's form) cannot be expressed here, and free-form text would fail outside the window.
        raise PermanentDeliveryError("whatsapp_template has no content_sid (Twilio Content API)")
    content: dict[str, Any] = {"content_sid": sid}
    variables = template.get("content_variables")
    if variables is not None:
        content["content_variables"] = (
            variables if isinstance(variables, str) else json.dumps(variables)
        )
    return content


def parse_receipts(form: dict[str, str], *, now: float | None = None) -> list[Receipt]:
    """Receipts from one Twilio status callback for a WhatsApp message (`read` included)."""
    return parse_twilio_receipts(form, provider=TwilioWhatsAppConnector.name, now=now)
