"""Amazon SES (sesv2), per region: out of every contact list, onto the account-level suppression list.

The suppression list is what keeps any later email from being sent to the address; the
contact lists are where SES itself holds the address and the person's topic preferences.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lethe.policy.model import Processor
from lethe.processors.base import Credentials, Person, ProcessorUnavailable, Receipt, register

# SES accepts only BOUNCE or COMPLAINT as a reason; COMPLAINT is the one that means "do not send".
SUPPRESSION_REASON = "COMPLAINT"


@register("aws_sesv2")
class SesConnector:
    def __init__(self, name: str, spec: Processor, credentials: Credentials) -> None:
        self.name = name
        self.regions = list(spec.regions)
        self.credentials = credentials

    def _client(self, region: str) -> Any:
        c = self.credentials
        return boto3.client(
            "sesv2",
            region_name=region,
            endpoint_url=c.extra.get("endpoint_url") or None,
            aws_access_key_id=c.login or None,
            aws_secret_access_key=c.password or None,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=20),
        )

    @staticmethod
    def _contact_lists(client: Any) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = client.list_contact_lists(**kwargs)
            names += [cl["ContactListName"] for cl in page.get("ContactLists", [])]
            if not page.get("NextToken"):
                return names
            kwargs["NextToken"] = page["NextToken"]

    def erase(self, person: Person) -> Receipt:
        email = person.value("email")
        regions: dict[str, Any] = {}
        for region in self.regions:
            try:
                client = self._client(region)
                removed = 0
                for name in self._contact_lists(client):
                    try:
                        client.delete_contact(ContactListName=name, EmailAddress=email)
                        removed += 1
                    except client.exceptions.NotFoundException:
                        pass
                client.put_suppressed_destination(EmailAddress=email, Reason=SUPPRESSION_REASON)
            except (ClientError, BotoCoreError) as exc:
                raise ProcessorUnavailable(f"SES {region}: {_code(exc)}") from None
            regions[region] = {"contact_lists_removed": removed, "suppressed": True}
        return Receipt(self.name, "confirmed", detail={"regions": regions})

    def status(self, person: Person, job_id: str | None = None) -> Receipt:
        email = person.value("email")
        regions: dict[str, Any] = {}
        for region in self.regions:
            try:
                client = self._client(region)
                try:
                    client.get_suppressed_destination(EmailAddress=email)
                    suppressed = True
                except client.exceptions.NotFoundException:
                    suppressed = False
                listed = 0
                for name in self._contact_lists(client):
                    try:
                        client.get_contact(ContactListName=name, EmailAddress=email)
                        listed += 1
                    except client.exceptions.NotFoundException:
                        pass
            except (ClientError, BotoCoreError) as exc:
                raise ProcessorUnavailable(f"SES {region}: {_code(exc)}") from None
            regions[region] = {"suppressed": suppressed, "contact_lists_holding": listed}
        done = all(r["suppressed"] and not r["contact_lists_holding"] for r in regions.values())
        return Receipt(self.name, "confirmed" if done else "pending", detail={"regions": regions})


def _code(exc: Exception) -> str:
    # The error code or class only: an AWS message can quote the address.
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__
