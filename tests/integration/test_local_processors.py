"""The demo's local processors (lethe.processors.local) answer Lethe's real connectors over HTTP.

boto3's sesv2 client and the generic HTTP connector, configured from the policy file, call the
stand-in exactly as they call the providers; the test reads the stand-in's own state afterwards.
"""

from __future__ import annotations

import hashlib

import pytest
from lethe.policy import load_policy
from lethe.processors.base import Credentials, Person, connector
from lethe.processors.local import CONTACT_LIST, MAILCHIMP_LIST, LocalProcessors

pytestmark = pytest.mark.integration
EMAIL = "demo.person@example.org"


def test_every_processor_of_the_policy_erases_the_person_at_the_local_stand_ins() -> None:
    policy = load_policy()
    person = Person({"email": EMAIL, "user_id": "4242"})
    with LocalProcessors() as server:
        regions = sorted(r for p in policy.processors.values() if p.connector == "aws_sesv2" for r in p.regions)
        server.subscribe(EMAIL, regions)
        conns = server.connections()
        receipts, creds = {}, {}
        for name, spec in policy.processors.items():
            c = conns[spec.connection]
            creds[name] = Credentials(spec.connection, c.get("host", ""), c.get("login"), c.get("password"), c["extra"])
            conn = connector(name, spec, creds[name])
            receipts[name] = conn.erase(person)
            if name == "mixpanel":  # a deletion task: its status endpoint reports it done
                assert conn.status(person, receipts[name].job_id).status == "confirmed"  # type: ignore[attr-defined]

        assert set(receipts) == set(policy.processors)
        ses = receipts["amazon_ses"]
        assert ses.status == "confirmed"
        assert {r: v["contact_lists_removed"] for r, v in ses.detail["regions"].items()} == dict.fromkeys(regions, 1)
        for region in regions:  # the stand-in's own state: off the contact list, on the suppression list
            assert EMAIL not in server.contacts[(region, CONTACT_LIST)]
            assert EMAIL in server.suppressed[region]
        assert receipts["mixpanel"].status == "accepted" and receipts["mixpanel"].job_id
        assert receipts["mailchimp"].status == "confirmed"
        assert hashlib.md5(EMAIL.encode()).hexdigest() not in server.members[MAILCHIMP_LIST]
        # A second erasure finds nothing left and still confirms (404 is "not a member" at Mailchimp).
        again = connector("mailchimp", policy.processors["mailchimp"], creds["mailchimp"]).erase(person)
        assert again.status == "confirmed"
