"""The explicit provider registry: provider name -> connector class.

Adding a provider touches its own module and one line here.
"""

from __future__ import annotations

from typing import Any

import httpx

from connectors.apprise_connector import AppriseConnector
from connectors.base import Connector
from connectors.discord import DiscordConnector
from connectors.egress import Egress
from connectors.errors import UnknownProviderError
from connectors.fcm import FcmConnector
from connectors.google_chat import GoogleChatConnector
from connectors.in_app import InAppConnector
from connectors.mailgun import MailgunConnector
from connectors.mattermost import MattermostConnector
from connectors.meta_whatsapp import MetaWhatsAppConnector
from connectors.opsgenie import OpsgenieConnector
from connectors.pagerduty import PagerDutyConnector
from connectors.sendgrid import SendGridConnector
from connectors.ses import SesConnector
from connectors.slack import SlackConnector
from connectors.smtp import SmtpConnector
from connectors.teams import TeamsConnector
from connectors.telegram import TelegramConnector
from connectors.twilio_sms import TwilioSmsConnector
from connectors.twilio_whatsapp import TwilioWhatsAppConnector
from connectors.vonage import VonageConnector
from connectors.webhook import WebhookConnector

PROVIDERS: dict[str, type[Connector[Any]]] = {
    cls.name: cls
    for cls in (
        SmtpConnector,
        InAppConnector,
        WebhookConnector,
        SendGridConnector,
        MailgunConnector,
        SesConnector,
        TwilioSmsConnector,
        VonageConnector,
        TwilioWhatsAppConnector,
        MetaWhatsAppConnector,
        FcmConnector,
        PagerDutyConnector,
        OpsgenieConnector,
        AppriseConnector,
        SlackConnector,
        TeamsConnector,
        DiscordConnector,
        TelegramConnector,
        GoogleChatConnector,
        MattermostConnector,
    )
}


def provider_class(name: str) -> type[Connector[Any]]:
    try:
        return PROVIDERS[name]
    except KeyError:
        valid = ", ".join(sorted(PROVIDERS))
        raise UnknownProviderError(f"unknown provider {name!r}; valid: {valid}") from None


def build(
    name: str, values: dict[str, Any], *, http: httpx.AsyncClient, egress: Egress
) -> Connector[Any]:
    """A connector from its name and raw configuration values (validated by its model).

    `http` must be a guarded client (connectors/egress.py) built with the same `egress`.

    Raises UnknownProviderError, or pydantic's ValidationError naming the bad field.
    The in-app connector needs the deliver stage's publisher and is built there.
    """
    cls = provider_class(name)
    config = cls.config_model.model_validate(values)
    return cls(config, http=http, egress=egress)
