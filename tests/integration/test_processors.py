"""Processor connectors against local endpoints over HTTP: SES (moto server, real boto3) and the
documented deletion APIs of Mixpanel and Mailchimp (a local http.server). Expected hashes are
computed here with hashlib, not by lethe."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from lethe.policy import load_policy
from lethe.processors import Credentials, Person, ProcessorUnavailable, connector
from processor_services import (
    MAILCHIMP_KEY,
    MAILCHIMP_LIST,
    MIXPANEL_OAUTH,
    MIXPANEL_TOKEN,
    Provider,
    local_ses,
    ses_client,
)

EMAIL = "Asha.Rao@example.com"
PERSON = Person({"email": EMAIL, "user_id": "4242"})
REGIONS = ("us-east-1", "ap-southeast-1")


@pytest.fixture
def ses() -> Iterator[str]:
    with local_ses() as endpoint:
        yield endpoint


@pytest.fixture
def provider() -> Iterator[Provider]:
    with Provider() as p:
        yield p


def _ses(endpoint: str):  # type: ignore[no-untyped-def]
    spec = load_policy().processors["amazon_ses"]
    return connector(
        "amazon_ses", spec, Credentials("lethe_ses", login="lethe", password="x", extra={"endpoint_url": endpoint})
    )


def test_ses_removes_the_person_from_every_contact_list_and_suppresses_them_in_both_regions(ses: str) -> None:
    for region in REGIONS:
        client = ses_client(ses, region)
        for name in ("newsletter", "product-updates"):
            client.create_contact_list(ContactListName=f"{name}-{region}")
            client.create_contact(ContactListName=f"{name}-{region}", EmailAddress=EMAIL)
            client.create_contact(ContactListName=f"{name}-{region}", EmailAddress="other@example.com")

    conn = _ses(ses)
    before = conn.status(PERSON)
    assert before.status == "pending"
    receipt = conn.erase(PERSON)

    assert receipt.status == "confirmed"
    assert receipt.detail["regions"] == {r: {"contact_lists_removed": 2, "suppressed": True} for r in REGIONS}
    assert EMAIL not in repr(receipt.as_dict())
    for region in REGIONS:  # checked with boto3 directly, not through the connector
        client = ses_client(ses, region)
        for name in ("newsletter", "product-updates"):
            emails = [c["EmailAddress"] for c in client.list_contacts(ContactListName=f"{name}-{region}")["Contacts"]]
            assert emails == ["other@example.com"]
        entry = client.get_suppressed_destination(EmailAddress=EMAIL)["SuppressedDestination"]
        assert entry["Reason"] == "COMPLAINT"
    assert conn.status(PERSON).status == "confirmed"
    assert conn.erase(PERSON).status == "confirmed"  # again: nothing left to remove, still suppressed


def test_ses_unreachable_is_unavailable_and_names_no_address() -> None:
    conn = _ses("http://127.0.0.1:9")
    with pytest.raises(ProcessorUnavailable) as caught:
        conn.erase(PERSON)
    assert EMAIL.lower() not in str(caught.value).lower()


def _mixpanel(provider: Provider):  # type: ignore[no-untyped-def]
    spec = load_policy().processors["mixpanel"]
    creds = Credentials(
        "lethe_mixpanel", host=provider.url, password=MIXPANEL_OAUTH, extra={"project_token": MIXPANEL_TOKEN}
    )
    return connector("mixpanel", spec, creds)


def _mailchimp(provider: Provider):  # type: ignore[no-untyped-def]
    spec = load_policy().processors["mailchimp"]
    creds = Credentials(
        "lethe_mailchimp", host=provider.url, login="lethe", password=MAILCHIMP_KEY, extra={"list_id": MAILCHIMP_LIST}
    )
    return connector("mailchimp", spec, creds)


def test_mixpanel_deletion_task_is_created_with_the_distinct_id_and_tracked_to_success(provider: Provider) -> None:
    conn = _mixpanel(provider)
    receipt = conn.erase(PERSON)

    assert receipt.status == "accepted"
    assert receipt.job_id in provider.tasks
    assert provider.tasks[receipt.job_id]["distinct_ids"] == ["4242"]
    (_, method, path, body) = provider.calls_to("mixpanel")[0]
    assert (method, path) == ("POST", f"/api/app/data-deletions/v3.0/?token={MIXPANEL_TOKEN}")
    assert body == {"distinct_ids": ["4242"], "compliance_type": "GDPR"}

    assert conn.status(PERSON, receipt.job_id).status == "pending"
    provider.finish_tasks()
    done = conn.status(PERSON, receipt.job_id)
    assert (done.status, done.detail["state"]) == ("confirmed", "SUCCESS")


def test_mailchimp_member_is_deleted_permanently_by_subscriber_hash(provider: Provider) -> None:
    provider.subscribe(EMAIL)
    provider.subscribe("other@example.com")
    conn = _mailchimp(provider)
    assert conn.status(PERSON).status == "pending"

    receipt = conn.erase(PERSON)

    expected_hash = hashlib.md5(EMAIL.lower().encode()).hexdigest()
    assert receipt.status == "confirmed"
    assert provider.calls_to("mailchimp")[-1][1:3] == (
        "POST",
        f"/3.0/lists/{MAILCHIMP_LIST}/members/{expected_hash}/actions/delete-permanent",
    )
    assert expected_hash not in provider.members[MAILCHIMP_LIST]
    assert len(provider.members[MAILCHIMP_LIST]) == 1
    assert conn.status(PERSON).status == "confirmed"
    assert all(EMAIL.lower() not in path.lower() for _, _, path, _ in provider.calls)
    assert conn.erase(PERSON).status == "confirmed"  # not a member any more: 404 is success


def test_provider_errors_are_unavailable_not_success(provider: Provider) -> None:
    provider.fail_next["mixpanel"] = 1
    with pytest.raises(ProcessorUnavailable, match="HTTP 503"):
        _mixpanel(provider).erase(PERSON)
    bad = Credentials("lethe_mixpanel", host=provider.url, password="wrong", extra={"project_token": MIXPANEL_TOKEN})
    with pytest.raises(ProcessorUnavailable, match="HTTP 401"):
        connector("mixpanel", load_policy().processors["mixpanel"], bad).erase(PERSON)
    assert not provider.tasks
