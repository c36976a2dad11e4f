"""Every enforceable retention clause as literal facts. See clause_harness.py for how they run.

Each fact plants rows with its own SQL and returns the check; `says` is the assertion in words
(it is also the failure message and what `lethe policy report` prints).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from clause_harness import (
    NOW,
    YESTERDAY_EVENING,
    Cursor,
    Fact,
    account,
    consent,
    days_ago,
    expect,
    fact,
    hold,
    ids,
    one,
    register,
    years_ago,
)
from lethe.connections import pseudonym_key_or_local
from psycopg2 import sql

# ---- 7. legal duties: accounts and tax records ------------------------------------------------

INVOICE = (
    "INSERT INTO invoices (invoice_id, user_id, billing_name, billing_address, tax_id, amount_cents, currency,"
    " issued_at) VALUES (%s, %s, 'Person', '12 MG Road', 'GSTIN-1', 49900, 'INR', %s)"
)
PAYMENT = (
    "INSERT INTO payments (payment_id, invoice_id, user_id, amount_cents, method, card_last4, paid_at)"
    " VALUES (%s, %s, %s, 49900, 'card', '4242', %s)"
)


@fact(
    "tax-records",
    table="invoices",
    rules=["invoices_statutory_period"],
    says="an invoice issued 7 years ago survives the purge; one issued 9 years ago does not",
)
def invoices_kept_for_the_statutory_period(cur: Cursor):
    account(cur, 101)
    cur.execute(INVOICE, (1011, 101, years_ago(7)))
    cur.execute(INVOICE, (1012, 101, years_ago(9)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT invoice_id FROM invoices WHERE user_id = 101"), {1011})

    return check


@fact(
    "tax-records",
    table="payments",
    rules=["payments_statutory_period"],
    says="a payment made 7 years ago survives the purge; one made 9 years ago does not",
)
def payments_kept_for_the_statutory_period(cur: Cursor):
    account(cur, 201)
    cur.execute(INVOICE, (2011, 201, years_ago(7)))
    cur.execute(INVOICE, (2012, 201, years_ago(9)))
    cur.execute(PAYMENT, (2011, 2011, 201, years_ago(7)))
    cur.execute(PAYMENT, (2012, 2012, 201, years_ago(9)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT payment_id FROM payments WHERE user_id = 201"), {2011})

    return check


def ist(day: str) -> datetime:
    """Noon in India on a literal date: the financial year is India's (1 April to 31 March)."""
    return datetime.fromisoformat(f"{day}T12:00:00+05:30")


@fact(
    "tax-records",
    table="invoices",
    rules=["invoices_statutory_period"],
    says="8 years count from the end of the financial year: on 1 June 2026 an invoice issued on 10 May 2018"
    " (year ending 31 March 2019) is kept; one issued on 15 March 2017 (year ending 31 March 2017) is gone",
)
def invoices_kept_from_the_financial_years_end(cur: Cursor):
    account(cur, 3701)
    cur.execute(INVOICE, (37011, 3701, ist("2018-05-10")))
    cur.execute(INVOICE, (37012, 3701, ist("2017-03-15")))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT invoice_id FROM invoices WHERE user_id = 3701"), {37011})

    return check


@fact(
    "evidence",
    table="payments",
    rules=["payments_statutory_period"],
    says="a payment's 8 years count from the end of the financial year of its refund, if any: on 1 June 2026 a"
    " payment of 10 May 2018 is kept, one of 15 March 2017 is gone, and one of 15 March 2017 refunded on"
    " 10 May 2018 is kept",
)
def payments_kept_from_the_financial_years_end_of_a_refund(cur: Cursor):
    account(cur, 3801)
    for n, day in ((1, "2018-05-10"), (2, "2017-03-15"), (3, "2017-03-15")):
        cur.execute(INVOICE, (38010 + n, 3801, ist(day)))
        cur.execute(PAYMENT, (38010 + n, 38010 + n, 3801, ist(day)))
    cur.execute("UPDATE payments SET refunded_at = %s WHERE payment_id = 38013", (ist("2018-05-10"),))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT payment_id FROM payments WHERE user_id = 3801"), {38011, 38013})

    return check


# ---- closed accounts ---------------------------------------------------------------------------


@fact(
    "account-removal",
    table="accounts",
    rules=["closed_account_details"],
    says="31 days after closure an account the tax records still point at has a blank name, password hash,"
    " phone, age, address, city and interests, and an email and username that name no one (different for two"
    " such accounts); 20 days after closure they are all still there",
)
def closed_account_details_blank_after_31_days(cur: Cursor):
    account(cur, 301, closed=days_ago(31))
    account(cur, 302, closed=days_ago(20))
    account(cur, 303, closed=days_ago(31))
    cur.execute(INVOICE, (3011, 301, years_ago(1)))  # the law keeps the invoice, so the account row stays
    cur.execute(INVOICE, (3021, 302, years_ago(1)))
    cur.execute(INVOICE, (3031, 303, years_ago(1)))

    def check(cur: Cursor) -> None:
        details = (
            "SELECT name, password_hash, phone, age, address, city, interests, email, username"
            " FROM accounts WHERE user_id = %s"
        )
        name, password, *rest, email, username = one(cur, details, 301)
        expect(name in ("", "[redacted]"), True, "name")
        expect(password in ("", "[redacted]"), True, "password hash")
        expect(rest, [None] * 5, "phone, age, address, city, interests")
        for what, value in (("email", email), ("username", username)):
            expect("person301" in value or "@example.com" in value, False, f"{what} names the person")
        other = one(cur, "SELECT email, username FROM accounts WHERE user_id = 303")
        expect(other[0] != email and other[1] != username, True, "two closed accounts share a placeholder")
        expect(
            one(cur, details, 302),
            (
                "Person 302",
                "pbkdf2$secret",
                "+91 98450 00000",
                34,
                "12 MG Road",
                "Bengaluru",
                ["python"],
                "person302@example.com",
                "person302",
            ),
            "20 days after closure",
        )

    return check


@fact(
    "account-removal",
    table="accounts",
    rules=["closed_accounts"],
    says="an account closed 31 days ago that nothing the law keeps points at is gone; one closed 20 days ago"
    " and an open one are still there",
)
def closed_accounts_gone_after_31_days(cur: Cursor):
    account(cur, 401, closed=days_ago(31))
    account(cur, 402, closed=days_ago(20))
    account(cur, 403)

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT user_id FROM accounts WHERE user_id BETWEEN 401 AND 403"), {402, 403})

    return check


@fact(
    "account-removal",
    table="ssh_keys",
    rules=["ssh_keys_of_closed_accounts"],
    says="the SSH key of an account closed yesterday evening is gone the next morning; an open account's key stays",
)
def ssh_keys_gone_when_account_closes(cur: Cursor):
    account(cur, 501, closed=YESTERDAY_EVENING)
    account(cur, 502)
    for key_id, user_id in ((5011, 501), (5021, 502)):
        cur.execute(
            "INSERT INTO ssh_keys (key_id, user_id, public_key, added_at) VALUES (%s, %s, 'ssh-ed25519 AAAA', %s)",
            (key_id, user_id, years_ago(2)),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT key_id FROM ssh_keys WHERE user_id IN (501, 502)"), {5021})

    return check


@fact(
    "account-removal",
    table="comments",
    rules=["comments_of_closed_accounts"],
    says="the comments of an account closed 31 days ago are gone; those of one closed 20 days ago are still there",
)
def comments_gone_31_days_after_closure(cur: Cursor):
    account(cur, 1501, closed=days_ago(31))
    account(cur, 1502, closed=days_ago(20))
    for comment_id, user_id in ((15011, 1501), (15021, 1502)):
        cur.execute(
            "INSERT INTO comments (comment_id, user_id, body, created_at) VALUES (%s, %s, 'Great course', %s)",
            (comment_id, user_id, years_ago(1)),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT comment_id FROM comments WHERE user_id IN (1501, 1502)"), {15021})

    return check


@fact(
    "account-removal",
    table="app_data",
    rules=["app_data_of_closed_accounts"],
    says="app data of an account closed 31 days ago is gone; that of one closed 20 days ago is still there",
)
def app_data_gone_31_days_after_closure(cur: Cursor):
    account(cur, 1901, closed=days_ago(31))
    account(cur, 1902, closed=days_ago(20))
    for app_data_id, user_id in ((19011, 1901), (19021, 1902)):
        cur.execute(
            "INSERT INTO app_data (app_data_id, user_id, app, payload, updated_at) VALUES (%s, %s, 'ide', '{}', %s)",
            (app_data_id, user_id, days_ago(40)),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT app_data_id FROM app_data WHERE user_id IN (1901, 1902)"), {19021})

    return check


@fact(
    "objection",
    table="consents",
    rules=["consents_after_closure"],
    says="the consent records of an account closed 400 days ago are gone; those of one closed 270 days ago stay",
)
def consents_kept_a_year_after_closure(cur: Cursor):
    account(cur, 701, closed=days_ago(400))
    account(cur, 702, closed=days_ago(270))
    consent(cur, 7011, 701, "updates")
    consent(cur, 7021, 702, "updates")

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT consent_id FROM consents WHERE user_id IN (701, 702)"), {7021})

    return check


# ---- objection and consent -------------------------------------------------------------------

CONTACT = (
    "INSERT INTO marketing_contacts (contact_id, user_id, email, name, list_name, subscribed_at)"
    " VALUES (%s, %s, 'someone@example.com', 'Someone', 'newsletter', %s)"
)


@fact(
    "marketing-consent",
    table="marketing_contacts",
    rules=["marketing_after_objection"],
    says="a person who objected to marketing yesterday evening, or withdrew the consent, has no marketing rows"
    " the next morning; one who consents, or objected only to analytics, keeps them",
)
def marketing_gone_the_morning_after_objection(cur: Cursor):
    for user_id in (801, 802, 803, 804):
        account(cur, user_id)
    consent(cur, 8011, 801, "marketing", objected=YESTERDAY_EVENING)
    consent(cur, 8021, 802, "marketing")
    consent(cur, 8031, 803, "marketing", withdrawn=YESTERDAY_EVENING)
    consent(cur, 8041, 804, "marketing")
    consent(cur, 8042, 804, "analytics", objected=YESTERDAY_EVENING)
    for user_id in (801, 802, 803, 804):
        cur.execute(CONTACT, (user_id * 10 + 1, user_id, years_ago(1)))

    def check(cur: Cursor) -> None:
        got = ids(cur, "SELECT user_id FROM marketing_contacts WHERE user_id BETWEEN 801 AND 804")
        expect(got, {802, 804})

    return check


@fact(
    "marketing-consent",
    table="marketing_contacts",
    rules=["marketing_of_closed_accounts"],
    says="the marketing rows of an account closed yesterday evening are gone the next morning",
)
def marketing_gone_when_account_closes(cur: Cursor):
    account(cur, 901, closed=YESTERDAY_EVENING)
    account(cur, 902)
    consent(cur, 9011, 901, "marketing")
    consent(cur, 9021, 902, "marketing")
    cur.execute(CONTACT, (9011, 901, years_ago(1)))
    cur.execute(CONTACT, (9021, 902, years_ago(1)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT user_id FROM marketing_contacts WHERE user_id IN (901, 902)"), {902})

    return check


FEEDBACK = (
    "INSERT INTO feedback (feedback_id, user_id, body, rating, consent_to_quote, created_at)"
    " VALUES (%s, %s, 'Loved it', 5, true, %s)"
)


@fact(
    "feedback-quotes",
    table="feedback",
    rules=["feedback_after_quote_withdrawal"],
    says="feedback of a person who withdrew consent to be quoted yesterday evening is gone the next morning;"
    " feedback of one who still consents stays",
)
def feedback_gone_after_quote_withdrawal(cur: Cursor):
    account(cur, 1701)
    account(cur, 1702)
    consent(cur, 17011, 1701, "quotes", withdrawn=YESTERDAY_EVENING)
    consent(cur, 17021, 1702, "quotes")
    cur.execute(FEEDBACK, (17011, 1701, days_ago(30)))
    cur.execute(FEEDBACK, (17021, 1702, days_ago(30)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT feedback_id FROM feedback WHERE user_id IN (1701, 1702)"), {17021})

    return check


@fact(
    "feedback-quotes",
    table="feedback",
    rules=["old_feedback"],
    says="feedback given 18 months ago is kept; feedback given 3 years ago is gone",
)
def feedback_kept_two_years(cur: Cursor):
    account(cur, 1601)
    cur.execute(FEEDBACK, (16011, 1601, days_ago(547)))
    cur.execute(FEEDBACK, (16012, 1601, years_ago(3)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT feedback_id FROM feedback WHERE user_id = 1601"), {16011})

    return check


# ---- usage and visitor details -----------------------------------------------------------------

EVENT = (
    "INSERT INTO usage_events (event_id, user_id, occurred_at, feature, duration_ms, storage_bytes)"
    " VALUES (%s, %s, %s, 'editor', 1000, 0)"
)
VISIT = (
    "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, device_type, browser,"
    " user_agent, language, file_accessed, referrer, error, os, time_zone)"
    " VALUES (%s, %s, %s, %s, %s, 'desktop', 'firefox', 'Mozilla/5.0 (X11; Linux x86_64)', 'en-IN', '/index',"
    " NULL, NULL, 'linux', 'Asia/Kolkata')"
)


@fact(
    "usage-permitted",
    table="usage_events",
    rules=["raw_usage_events"],
    says="a raw usage event from 120 days ago is gone; one from 60 days ago is still there",
)
def raw_usage_kept_90_days(cur: Cursor):
    account(cur, 1101)
    consent(cur, 11019, 1101, "analytics")
    cur.execute(EVENT, (11011, 1101, days_ago(120)))
    cur.execute(EVENT, (11012, 1101, days_ago(60)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT event_id FROM usage_events WHERE event_id IN (11011, 11012)"), {11012})

    return check


@fact(
    "objection",
    table="usage_events",
    rules=["usage_after_analytics_objection"],
    says="the usage events of a person who objected to analytics yesterday evening are gone the next morning;"
    " those of one who permits analytics stay",
)
def usage_gone_the_morning_after_analytics_objection(cur: Cursor):
    account(cur, 1201)
    account(cur, 1202)
    consent(cur, 12011, 1201, "analytics", objected=YESTERDAY_EVENING)
    consent(cur, 12021, 1202, "analytics")
    cur.execute(EVENT, (12011, 1201, days_ago(10)))
    cur.execute(EVENT, (12021, 1202, days_ago(10)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT event_id FROM usage_events WHERE event_id IN (12011, 12021)"), {12021})

    return check


@fact(
    "visitor-details",
    table="visitor_logs",
    rules=["visitor_ip_truncation"],
    says="a visitor's raw IP address and user agent do not outlive a week: an 8-day-old log line keeps only the"
    " /24 network of its IP and no user agent; a 5-day-old one still has both",
)
def visitor_ips_truncated_after_a_week(cur: Cursor):
    account(cur, 1301)
    consent(cur, 13019, 1301, "analytics")
    cur.execute(VISIT, (13011, 1301, "v-1301", days_ago(8), "203.0.113.77"))
    cur.execute(VISIT, (13012, 1301, "v-1301", days_ago(5), "203.0.113.78"))

    def check(cur: Cursor) -> None:
        row = "SELECT host(ip_address), masklen(ip_address), user_agent FROM visitor_logs WHERE log_id = %s"
        expect(one(cur, row, 13011), ("203.0.113.0", 24, None))
        expect(one(cur, row, 13012), ("203.0.113.78", 32, "Mozilla/5.0 (X11; Linux x86_64)"))

    return check


@fact(
    "visitor-details",
    table="visitor_logs",
    rules=["raw_visitor_logs"],
    says="a visitor log line from 40 days ago is gone; one from 20 days ago is still there",
)
def visitor_logs_kept_30_days(cur: Cursor):
    account(cur, 1401)
    consent(cur, 14019, 1401, "analytics")
    cur.execute(VISIT, (14011, 1401, "v-1401", days_ago(40), "198.51.100.7"))
    cur.execute(VISIT, (14012, 1401, "v-1401", days_ago(20), "198.51.100.8"))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT log_id FROM visitor_logs WHERE log_id IN (14011, 14012)"), {14012})

    return check


@fact(
    "usage-permitted",
    table="usage_events",
    rules=["usage_without_analytics_consent"],
    says="the next morning no usage event is left from a time the person had not permitted analytics: one of a"
    " person who never consented (yesterday evening) and one from before a consent given 10 days ago are gone;"
    " one from after that consent, and one of a person consenting for 3 years, stay",
)
def usage_only_while_analytics_permitted(cur: Cursor):
    for user_id in (3101, 3102, 3103):
        account(cur, user_id)
    cur.execute(
        "INSERT INTO consents (consent_id, user_id, purpose, granted_at) VALUES (31021, 3102, 'analytics', %s)",
        (days_ago(10),),
    )
    consent(cur, 31031, 3103, "analytics")
    cur.execute(EVENT, (31011, 3101, YESTERDAY_EVENING))
    cur.execute(EVENT, (31021, 3102, days_ago(20)))
    cur.execute(EVENT, (31022, 3102, days_ago(5)))
    cur.execute(EVENT, (31031, 3103, YESTERDAY_EVENING))

    def check(cur: Cursor) -> None:
        got = ids(cur, "SELECT event_id FROM usage_events WHERE event_id IN (31011, 31021, 31022, 31031)")
        expect(got, {31022, 31031})

    return check


@fact(
    "usage-permitted",
    table="visitor_logs",
    rules=["visits_without_analytics_consent"],
    says="the next morning no visitor log line of a signed-in person is left from a time they had not permitted"
    " analytics: never consented (3 days ago), before a consent given 2 days ago, after an objection 20 days ago"
    " are gone; one after that consent, one before that objection, and an anonymous visitor's line stay",
)
def visits_only_while_analytics_permitted(cur: Cursor):
    for user_id in (3201, 3202, 3203):
        account(cur, user_id)
    cur.execute(
        "INSERT INTO consents (consent_id, user_id, purpose, granted_at) VALUES (32021, 3202, 'analytics', %s)",
        (days_ago(2),),
    )
    consent(cur, 32031, 3203, "analytics", objected=days_ago(20))
    cur.execute(VISIT, (32011, 3201, "v-3201", days_ago(3), "203.0.113.1"))
    cur.execute(VISIT, (32021, 3202, "v-3202", days_ago(3), "203.0.113.2"))
    cur.execute(VISIT, (32022, 3202, "v-3202", YESTERDAY_EVENING, "203.0.113.2"))
    cur.execute(VISIT, (32031, 3203, "v-3203", days_ago(25), "203.0.113.3"))
    cur.execute(VISIT, (32032, 3203, "v-3203", days_ago(10), "203.0.113.3"))
    cur.execute(VISIT, (32041, None, "v-anonymous-3204", YESTERDAY_EVENING, "203.0.113.4"))

    def check(cur: Cursor) -> None:
        got = ids(cur, "SELECT log_id FROM visitor_logs WHERE log_id BETWEEN 32011 AND 32041")
        expect(got, {32022, 32031, 32041})

    return check


@fact(
    "objection",
    table="visitor_logs",
    rules=["visitor_ip_after_analytics_objection"],
    says="the morning after an objection to analytics, the person's visitor log line from 3 days ago keeps only"
    " the /24 network of its IP and no user agent; the same line of a person who permits analytics is unchanged",
)
def visitor_ip_truncated_after_analytics_objection(cur: Cursor):
    account(cur, 3601)
    account(cur, 3602)
    consent(cur, 36011, 3601, "analytics", objected=YESTERDAY_EVENING)
    consent(cur, 36021, 3602, "analytics")
    cur.execute(VISIT, (36011, 3601, "v-3601", days_ago(3), "198.51.100.61"))
    cur.execute(VISIT, (36021, 3602, "v-3602", days_ago(3), "198.51.100.62"))

    def check(cur: Cursor) -> None:
        row = "SELECT host(ip_address), masklen(ip_address), user_agent FROM visitor_logs WHERE log_id = %s"
        expect(one(cur, row, 36011), ("198.51.100.0", 24, None), "objected")
        expect(one(cur, row, 36021), ("198.51.100.62", 32, "Mozilla/5.0 (X11; Linux x86_64)"), "permits")

    return check


def keyed_pseudonym(user_id: int) -> str:
    """The person's keyed pseudonym as the contract defines it: HMAC-SHA256 of `user_id:<id>` with the
    pseudonym key (the lethe_pseudonym_key connection, else the local key the purge also reads)."""
    key = pseudonym_key_or_local()
    return hmac.new(key, f"user_id:{user_id}".encode(), hashlib.sha256).hexdigest()


NAMED_BY = (
    # rows of tables holding a name that a value could be joined to: the account itself, and the tax
    # records an erasure keeps under the same keyed pseudonym
    "SELECT count(*) FROM accounts a WHERE a::text LIKE '%%' || %(v)s || '%%'",
    "SELECT count(*) FROM invoices i WHERE i::text LIKE '%%' || %(v)s || '%%'",
    "SELECT count(*) FROM payments p WHERE p::text LIKE '%%' || %(v)s || '%%'",
)


def unlinked(cur: Cursor, table: str, key: str, row_id: int) -> str:
    """Assert the row has no user id, no join to an account, and a value no table with a name holds."""
    query = sql.SQL("SELECT user_id, subject_pseudonym FROM {} WHERE {} = %s").format(
        sql.Identifier(table), sql.Identifier(key)
    )
    user_id, pseudonym = one(cur, query.as_string(cur), row_id)
    expect(user_id, None, f"{table} {row_id}: user id")
    assert pseudonym and len(pseudonym) == 64 and int(pseudonym, 16) >= 0, f"{table} {row_id}: pseudonym {pseudonym!r}"
    joined = sql.SQL("SELECT count(*) FROM {} t JOIN accounts a ON a.user_id = t.user_id WHERE t.{} = %s").format(
        sql.Identifier(table), sql.Identifier(key)
    )
    expect(one(cur, joined.as_string(cur), row_id), (0,), f"{table} {row_id}: rows joined to an account")
    for query in NAMED_BY:
        cur.execute(query, {"v": pseudonym})
        expect(cur.fetchone(), (0,), f"{table} {row_id}: {query.split(' FROM ')[1].split()[0]} rows holding it")
    return pseudonym


@fact(
    "usage-not-named",
    table="usage_events",
    rules=["usage_events_unlinked"],
    says="the next morning a usage event 25 hours old has no user id, no join to the accounts table and no value"
    " any table with a name holds, only the person's keyed pseudonym (the same on their 47-hour-old event,"
    " another on another person's); events 20 hours and 1 hour old still carry the user id",
)
def usage_not_associated_with_the_name_after_a_day(cur: Cursor):
    account(cur, 3901)
    account(cur, 3902)
    consent(cur, 39019, 3901, "analytics")
    consent(cur, 39029, 3902, "analytics")
    for event_id, user_id, hours in ((39011, 3901, 25), (39012, 3901, 47), (39013, 3901, 20), (39014, 3901, 1)):
        cur.execute(EVENT, (event_id, user_id, NOW - timedelta(hours=hours)))
    cur.execute(EVENT, (39021, 3902, NOW - timedelta(hours=30)))

    def check(cur: Cursor) -> None:
        first, second, other = (unlinked(cur, "usage_events", "event_id", e) for e in (39011, 39012, 39021))
        expect(first == second, True, "one person, one pseudonym")
        expect(first == other, False, "two people, two pseudonyms")
        named = "SELECT a.name FROM usage_events e JOIN accounts a ON a.user_id = e.user_id WHERE e.event_id = %s"
        expect(one(cur, named, 39013), ("Person 3901",), "20 hours old")
        expect(one(cur, named, 39014), ("Person 3901",), "1 hour old")

    return check


@fact(
    "usage-not-named",
    table="visitor_logs",
    rules=["visitor_logs_unlinked"],
    says="the next morning a signed-in visitor's log line 25 hours old has no user id, no join to the accounts"
    " table and no value any table with a name holds; lines 20 hours and 1 hour old still carry the user id",
)
def visits_not_associated_with_the_name_after_a_day(cur: Cursor):
    account(cur, 4001)
    consent(cur, 40019, 4001, "analytics")
    for log_id, hours in ((40011, 25), (40012, 20), (40013, 1)):
        cur.execute(VISIT, (log_id, 4001, "v-4001", NOW - timedelta(hours=hours), "203.0.113.40"))

    def check(cur: Cursor) -> None:
        unlinked(cur, "visitor_logs", "log_id", 40011)
        named = "SELECT a.name FROM visitor_logs v JOIN accounts a ON a.user_id = v.user_id WHERE v.log_id = %s"
        expect(one(cur, named, 40012), ("Person 4001",), "20 hours old")
        expect(one(cur, named, 40013), ("Person 4001",), "1 hour old")

    return check


PSEUDONYMISED_EVENT = (
    "INSERT INTO usage_events (event_id, user_id, subject_pseudonym, occurred_at, feature, duration_ms)"
    " VALUES (%s, NULL, %s, %s, 'editor', 1000)"
)


@fact(
    "objection",
    table="usage_events",
    rules=["usage_after_analytics_objection"],
    says="an objection to analytics yesterday evening reaches the person's events already tied only to their"
    " keyed pseudonym (10 days old): gone the next morning; those of a person who permits analytics stay",
)
def objection_reaches_pseudonymised_usage(cur: Cursor):
    account(cur, 4101)
    account(cur, 4102)
    consent(cur, 41011, 4101, "analytics", objected=YESTERDAY_EVENING)
    consent(cur, 41021, 4102, "analytics")
    cur.execute(PSEUDONYMISED_EVENT, (41011, keyed_pseudonym(4101), days_ago(10)))
    cur.execute(PSEUDONYMISED_EVENT, (41021, keyed_pseudonym(4102), days_ago(10)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT event_id FROM usage_events WHERE event_id IN (41011, 41021)"), {41021})

    return check


@fact(
    "litigation",
    table="usage_events",
    rules=["raw_usage_events"],
    says="a legal hold keeps the person's usage events tied only to their keyed pseudonym, even past the 90"
    " days (one from 2025-11-15); the same event of a person not under hold is gone",
)
def legal_hold_keeps_pseudonymised_usage(cur: Cursor):
    account(cur, 4201)
    account(cur, 4202)
    hold(cur, 42019, 4201)
    cur.execute(PSEUDONYMISED_EVENT, (42011, keyed_pseudonym(4201), datetime(2025, 11, 15, tzinfo=UTC)))
    cur.execute(PSEUDONYMISED_EVENT, (42021, keyed_pseudonym(4202), datetime(2025, 11, 15, tzinfo=UTC)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT event_id FROM usage_events WHERE event_id IN (42011, 42021)"), {42011})

    return check


@fact(
    "cookies",
    table="sessions",
    rules=["expired_cookies"],
    says="a session cookie that expired last night is gone the next morning; one that expires tomorrow is there",
)
def expired_cookies_gone(cur: Cursor):
    account(cur, 1001)
    for session_id, expires in ((10011, YESTERDAY_EVENING), (10012, days_ago(-1))):
        cur.execute(
            "INSERT INTO sessions (session_id, user_id, cookie_id, kind, ip_address, created_at, expires_at)"
            " VALUES (%s, 1001, %s, 'temporary', '192.0.2.10', %s, %s)",
            (session_id, f"c-{session_id}", days_ago(2), expires),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT session_id FROM sessions WHERE user_id = 1001"), {10012})

    return check


@fact(
    "objection",
    table="feedback",
    rules=["feedback_after_marketing_objection"],
    says="feedback of a person who objected to marketing yesterday evening is gone the next morning, though they"
    " never withdrew consent to be quoted; feedback of one who permits marketing stays",
)
def feedback_gone_after_marketing_objection(cur: Cursor):
    account(cur, 3301)
    account(cur, 3302)
    consent(cur, 33011, 3301, "marketing", objected=YESTERDAY_EVENING)
    consent(cur, 33012, 3301, "quotes")
    consent(cur, 33021, 3302, "marketing")
    cur.execute(FEEDBACK, (33011, 3301, days_ago(30)))
    cur.execute(FEEDBACK, (33021, 3302, days_ago(30)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT feedback_id FROM feedback WHERE user_id IN (3301, 3302)"), {33021})

    return check


SURVEY = (
    "INSERT INTO survey_responses (response_id, user_id, survey, answers, created_at) VALUES (%s, %s, 'nps', '{}', %s)"
)


@fact(
    "objection",
    table="survey_responses",
    rules=["surveys_after_marketing_objection"],
    says="survey responses of a person who withdrew marketing consent yesterday evening are gone the next"
    " morning; those of one who permits marketing stay",
)
def surveys_gone_after_marketing_objection(cur: Cursor):
    account(cur, 3401)
    account(cur, 3402)
    consent(cur, 34011, 3401, "marketing", withdrawn=YESTERDAY_EVENING)
    consent(cur, 34021, 3402, "marketing")
    cur.execute(SURVEY, (34011, 3401, days_ago(30)))
    cur.execute(SURVEY, (34021, 3402, days_ago(30)))

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT response_id FROM survey_responses WHERE user_id IN (3401, 3402)"), {34021})

    return check


@fact(
    "objection",
    table="security_evidence",
    rules=["security_evidence_after_objection"],
    says="evidence of abuse (observed 120 days ago) about a person who objected to purpose iv 100 days ago is"
    " gone; about one who objected 60 days ago it is still kept (90 days to finish an investigation)",
)
def security_evidence_gone_90_days_after_objection(cur: Cursor):
    account(cur, 3501)
    account(cur, 3502)
    consent(cur, 35011, 3501, "security", objected=days_ago(100))
    consent(cur, 35021, 3502, "security", objected=days_ago(60))
    for evidence_id, user_id in ((35011, 3501), (35021, 3502)):
        cur.execute(
            "INSERT INTO security_evidence (evidence_id, user_id, ip_address, kind, detail, observed_at)"
            " VALUES (%s, %s, '192.0.2.35', 'scraping', 'many downloads', %s)",
            (evidence_id, user_id, days_ago(120)),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT evidence_id FROM security_evidence WHERE user_id IN (3501, 3502)"), {35021})

    return check


# ---- purposes that end ---------------------------------------------------------------------


@fact(
    "evidence",
    table="subscriptions",
    rules=["ended_subscriptions"],
    says="a subscription that ended 2 years ago is kept as evidence; one that ended 4 years ago is gone;"
    " a running one started 10 years ago stays",
)
def ended_subscriptions_kept_three_years(cur: Cursor):
    account(cur, 601)
    for subscription_id, ended in ((6011, years_ago(2)), (6012, years_ago(4)), (6013, None)):
        cur.execute(
            "INSERT INTO subscriptions (subscription_id, user_id, plan, started_at, ended_at)"
            " VALUES (%s, 601, 'pro', %s, %s)",
            (subscription_id, years_ago(10), ended),
        )

    def check(cur: Cursor) -> None:
        got = ids(cur, "SELECT subscription_id FROM subscriptions WHERE user_id = 601")
        expect(got, {6011, 6013})

    return check


@fact(
    "evidence",
    table="communications",
    rules=["old_communications"],
    says="a message exchanged 2 years ago is kept as evidence; one from 4 years ago is gone",
)
def communications_kept_three_years(cur: Cursor):
    account(cur, 2201)
    for message_id, sent in ((22011, years_ago(2)), (22012, years_ago(4))):
        cur.execute(
            "INSERT INTO communications (message_id, user_id, channel, direction, subject, body, sent_at)"
            " VALUES (%s, 2201, 'email', 'inbound', 'Refund', 'Please refund my order', %s)",
            (message_id, sent),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT message_id FROM communications WHERE user_id = 2201"), {22011})

    return check


@fact(
    "evidence",
    table="disputes",
    rules=["closed_disputes"],
    says="a dispute closed 4 years ago is kept; one closed 8 years ago is gone; an open one from 10 years ago stays",
)
def closed_disputes_kept_six_years(cur: Cursor):
    account(cur, 2301)
    for dispute_id, closed_at in ((23011, years_ago(4)), (23012, years_ago(8)), (23013, None)):
        cur.execute(
            "INSERT INTO disputes (dispute_id, user_id, summary, opened_at, closed_at)"
            " VALUES (%s, 2301, 'chargeback', %s, %s)",
            (dispute_id, years_ago(10), closed_at),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT dispute_id FROM disputes WHERE user_id = 2301"), {23011, 23013})

    return check


@fact(
    "retained-for-purpose",
    table="survey_responses",
    rules=["old_survey_responses"],
    says="a survey answered 270 days ago is kept; one answered 400 days ago is gone",
)
def survey_responses_kept_a_year(cur: Cursor):
    account(cur, 1801)
    for response_id, created in ((18011, days_ago(270)), (18012, days_ago(400))):
        cur.execute(
            "INSERT INTO survey_responses (response_id, user_id, survey, answers, created_at)"
            " VALUES (%s, 1801, 'nps', '{\"score\": 9}', %s)",
            (response_id, created),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT response_id FROM survey_responses WHERE user_id = 1801"), {18011})

    return check


@fact(
    "retained-for-purpose",
    table="issue_reports",
    rules=["resolved_issue_reports"],
    says="an issue report resolved 18 months ago is kept; one resolved 3 years ago is gone;"
    " an unresolved one from 5 years ago stays",
)
def resolved_issue_reports_kept_two_years(cur: Cursor):
    account(cur, 2001)
    for report_id, resolved in ((20011, days_ago(547)), (20012, years_ago(3)), (20013, None)):
        cur.execute(
            "INSERT INTO issue_reports (report_id, user_id, title, body, created_at, resolved_at)"
            " VALUES (%s, 2001, 'Crash', 'The editor crashes', %s, %s)",
            (report_id, years_ago(5), resolved),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT report_id FROM issue_reports WHERE user_id = 2001"), {20011, 20013})

    return check


@fact(
    "security",
    table="security_evidence",
    rules=["old_security_evidence"],
    says="evidence of abuse observed 270 days ago is kept; evidence observed 400 days ago is gone",
)
def security_evidence_kept_a_year(cur: Cursor):
    account(cur, 2101)
    for evidence_id, observed in ((21011, days_ago(270)), (21012, days_ago(400))):
        cur.execute(
            "INSERT INTO security_evidence (evidence_id, user_id, ip_address, kind, detail, observed_at)"
            " VALUES (%s, 2101, '192.0.2.66', 'credential_stuffing', 'many logins', %s)",
            (evidence_id, observed),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT evidence_id FROM security_evidence WHERE user_id = 2101"), {21011})

    return check


@fact(
    "litigation",
    table="legal_holds",
    rules=["released_holds"],
    says="a legal hold released 270 days ago is kept; one released 400 days ago is gone; an active hold stays",
)
def released_holds_kept_a_year(cur: Cursor):
    for hold_id, key, released in (
        (24011, "2401", days_ago(270)),
        (24012, "2401", days_ago(400)),
        (24021, "2402", None),
    ):
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at, released_at)"
            " VALUES (%s, %s, 'litigation', %s, %s)",
            (hold_id, key, years_ago(5), released),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT hold_id FROM legal_holds WHERE subject_key IN ('2401', '2402')"), {24011, 24021})

    return check


@fact(
    "removal-record",
    table="erasure_requests",
    rules=["completed_erasure_requests"],
    says="the record of a removal request completed 2 years ago is kept; one completed 4 years ago is gone",
)
def erasure_requests_kept_three_years(cur: Cursor):
    for request_id, completed in (
        ("00000000-0000-4000-8000-000000025011", years_ago(2)),
        ("00000000-0000-4000-8000-000000025012", years_ago(4)),
    ):
        cur.execute(
            "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, received_at, due_at, status,"
            " completed_at) VALUES (%s, 'email', NULL, %s, %s, 'completed', %s)",
            (request_id, completed, completed, completed),
        )

    def check(cur: Cursor) -> None:
        got = ids(cur, "SELECT request_id::text FROM erasure_requests WHERE request_id::text LIKE '%%00002501_'")
        expect(got, {"00000000-0000-4000-8000-000000025011"})

    return check


@fact(
    "removal-record",
    table="processor_receipts",
    rules=["old_processor_receipts"],
    says="a processor's receipt for a removal, last updated 2 years ago, is kept; one updated 4 years ago is gone",
)
def processor_receipts_kept_three_years(cur: Cursor):
    for ref, updated in (("clause-2551", years_ago(2)), ("clause-2552", years_ago(4))):
        cur.execute(
            "INSERT INTO processor_receipts (cause, subject_ref, processor, status, first_at, updated_at)"
            " VALUES ('erasure', %s, 'amazon_ses', 'confirmed', %s, %s)",
            (ref, updated, updated),
        )

    def check(cur: Cursor) -> None:
        got = ids(cur, "SELECT subject_ref FROM processor_receipts WHERE subject_ref LIKE 'clause-255_'")
        expect(got, {"clause-2551"})

    return check


@fact(
    "legal-obligations",
    table="audit_runs",
    rules=["old_audit_runs"],
    says="a compliance audit's verdict from 2 years ago is kept; one from 4 years ago is gone",
)
def audit_runs_kept_three_years(cur: Cursor):
    for run_id, audited in (("clause-2601", years_ago(2)), ("clause-2602", years_ago(4))):
        cur.execute(
            "INSERT INTO audit_runs (run_id, dag_id, audited_at, success, checks_total, checks_failed, results)"
            " VALUES (%s, 'compliance_audit', %s, true, 1, 0, '[]')",
            (run_id, audited),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT run_id FROM audit_runs WHERE run_id LIKE 'clause-26%%'"), {"clause-2601"})

    return check


@fact(
    "legal-obligations",
    table="audit_alerts",
    rules=["old_audit_alerts"],
    says="an alert raised 270 days ago is kept; one raised 400 days ago is gone",
)
def audit_alerts_kept_a_year(cur: Cursor):
    for alert_id, raised in ((27011, days_ago(270)), (27012, days_ago(400))):
        cur.execute(
            "INSERT INTO audit_alerts (alert_id, raised_at, kind, dag_id, message) VALUES (%s, %s, 'failed_run',"
            " 'retention_nightly', 'task failed')",
            (alert_id, raised),
        )

    def check(cur: Cursor) -> None:
        expect(ids(cur, "SELECT alert_id FROM audit_alerts WHERE alert_id IN (27011, 27012)"), {27011})

    return check


# ---- litigation: a legal hold keeps every row of the person ------------------------------------

# table: (statements planting one row of the held person U that every rule of the table has expired,
#         a query of that row, what it must still read). Each is its own fact, scoped to its table.
HELD_ROWS: dict[str, tuple[list[str], str, tuple[object, ...]]] = {
    "accounts": ([], "SELECT name, phone FROM accounts WHERE user_id = {u}", ("Person {u}", "+91 98450 00000")),
    "ssh_keys": (
        ["INSERT INTO ssh_keys VALUES ({u}1, {u}, 'ssh-ed25519 AAAA', '2015-01-01Z')"],
        "SELECT key_id FROM ssh_keys WHERE user_id = {u}",
        ("{u}1",),
    ),
    "subscriptions": (
        ["INSERT INTO subscriptions VALUES ({u}1, {u}, 'pro', '2010-01-01Z', '2015-01-01Z')"],
        "SELECT subscription_id FROM subscriptions WHERE user_id = {u}",
        ("{u}1",),
    ),
    "invoices": (
        [
            "INSERT INTO invoices (invoice_id, user_id, amount_cents, currency, issued_at)"
            " VALUES ({u}1, {u}, 100, 'INR', '2015-01-01Z')"
        ],
        "SELECT invoice_id FROM invoices WHERE user_id = {u}",
        ("{u}1",),
    ),
    "payments": (
        [
            "INSERT INTO invoices (invoice_id, user_id, amount_cents, currency, issued_at)"
            " VALUES ({u}1, {u}, 100, 'INR', '2015-01-01Z')",
            "INSERT INTO payments (payment_id, invoice_id, user_id, amount_cents, method, paid_at)"
            " VALUES ({u}1, {u}1, {u}, 100, 'card', '2015-01-01Z')",
        ],
        "SELECT payment_id FROM payments WHERE user_id = {u}",
        ("{u}1",),
    ),
    "consents": (
        ["INSERT INTO consents VALUES ({u}1, {u}, 'marketing', '2014-01-01Z', NULL, '2015-01-01Z')"],
        "SELECT consent_id FROM consents WHERE user_id = {u}",
        ("{u}1",),
    ),
    "marketing_contacts": (
        ["INSERT INTO marketing_contacts VALUES ({u}1, {u}, 'held@example.com', 'Held', 'news', '2014-01-01Z')"],
        "SELECT contact_id FROM marketing_contacts WHERE user_id = {u}",
        ("{u}1",),
    ),
    "sessions": (
        ["INSERT INTO sessions VALUES ({u}1, {u}, 'c-held', 'persistent', '192.0.2.1', '2015-01-01Z', '2015-01-02Z')"],
        "SELECT session_id FROM sessions WHERE user_id = {u}",
        ("{u}1",),
    ),
    "usage_events": (
        ["INSERT INTO usage_events VALUES ({u}1, {u}, '2025-11-15Z', 'editor', 10, 0)"],
        "SELECT event_id FROM usage_events WHERE user_id = {u}",
        ("{u}1",),
    ),
    "visitor_logs": (
        [
            "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, user_agent)"
            " VALUES ({u}1, {u}, 'v-held', '2025-11-15Z', '203.0.113.99', 'Mozilla/5.0')"
        ],
        "SELECT host(ip_address), user_agent FROM visitor_logs WHERE user_id = {u}",
        ("203.0.113.99", "Mozilla/5.0"),
    ),
    "comments": (
        ["INSERT INTO comments VALUES ({u}1, {u}, 'held comment', '2014-01-01Z')"],
        "SELECT comment_id FROM comments WHERE user_id = {u}",
        ("{u}1",),
    ),
    "feedback": (
        [
            "INSERT INTO feedback VALUES ({u}1, {u}, 'held feedback', 4, false, '2015-01-01Z')",
            "INSERT INTO consents VALUES ({u}2, {u}, 'quotes', '2014-01-01Z', '2015-01-01Z', NULL)",
        ],
        "SELECT feedback_id FROM feedback WHERE user_id = {u}",
        ("{u}1",),
    ),
    "survey_responses": (
        ["INSERT INTO survey_responses VALUES ({u}1, {u}, 'nps', '{{}}', '2015-01-01Z')"],
        "SELECT response_id FROM survey_responses WHERE user_id = {u}",
        ("{u}1",),
    ),
    "app_data": (
        ["INSERT INTO app_data VALUES ({u}1, {u}, 'ide', '{{}}', '2015-01-01Z')"],
        "SELECT app_data_id FROM app_data WHERE user_id = {u}",
        ("{u}1",),
    ),
    "issue_reports": (
        ["INSERT INTO issue_reports VALUES ({u}1, {u}, 'Crash', 'held report', '2014-01-01Z', '2015-01-01Z')"],
        "SELECT report_id FROM issue_reports WHERE user_id = {u}",
        ("{u}1",),
    ),
    "security_evidence": (
        ["INSERT INTO security_evidence VALUES ({u}1, {u}, '192.0.2.2', 'abuse', 'held', '2015-01-01Z')"],
        "SELECT evidence_id FROM security_evidence WHERE user_id = {u}",
        ("{u}1",),
    ),
    "communications": (
        ["INSERT INTO communications VALUES ({u}1, {u}, 'email', 'inbound', 'Hi', 'held message', '2015-01-01Z')"],
        "SELECT message_id FROM communications WHERE user_id = {u}",
        ("{u}1",),
    ),
    "disputes": (
        ["INSERT INTO disputes VALUES ({u}1, {u}, 'held dispute', '2010-01-01Z', '2015-01-01Z')"],
        "SELECT dispute_id FROM disputes WHERE user_id = {u}",
        ("{u}1",),
    ),
}


def _held_fact(table: str, user_id: int) -> Fact:
    statements, query, want = HELD_ROWS[table]
    fill = {"u": user_id}

    def plant(cur: Cursor):
        account(cur, user_id, closed=years_ago(10))
        hold(cur, user_id * 10 + 9, user_id)
        for statement in statements:
            cur.execute(statement.format(**fill))

    def check(cur: Cursor) -> None:
        cur.execute(query.format(**fill))
        row = cur.fetchone()
        expect(row and tuple(str(v) for v in row), tuple(str(w).format(**fill) for w in want))

    def planted(cur: Cursor):
        plant(cur)
        return check

    return Fact(
        name=f"legal_hold_keeps_{table}",
        clause="litigation",
        table=table,
        rules=(),
        says=f"a person under an active legal hold keeps their {table} rows, unchanged, even when every rule of"
        f" {table} has expired them (account closed 10 years ago, rows from 2015)",
        plant=planted,
    )


for _n, _table in enumerate(HELD_ROWS):
    register(_held_fact(_table, 2800 + _n))
