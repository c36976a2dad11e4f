"""The trigger form's identifier formats (no heavy imports: the DAG file reads these at parse time)."""

from __future__ import annotations

IDENTIFIER_KINDS = ("user_id", "email", "phone", "username")
MAX_USER_ID = 2**63 - 1  # the largest key a bigint column holds

# Per kind: a pattern and the plain rule an operator reads when it does not match.
FORMATS: dict[str, tuple[str, str]] = {
    "user_id": (
        r"[0-9]{1,19}|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}",
        f"a user id is the subject's key: 1 to 19 digits (at most {MAX_USER_ID}, PostgreSQL's bigint) or a UUID",
    ),
    "email": (
        r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        "an email looks like name@example.com (letters, digits and . _ % + - before the @)",
    ),
    "phone": (
        r"\+?[0-9][0-9 ().-]{5,24}",
        "a phone number is digits with an optional leading + (spaces, dots, dashes allowed)",
    ),
    "username": (
        r"[A-Za-z0-9][A-Za-z0-9._-]{1,63}",
        "a username is 2 to 64 letters, digits, dots, dashes or underscores",
    ),
}

# What the form accepts: any of the formats (the kind-specific check runs in the first task).
FORM_PATTERN = "^(?:" + "|".join(f"(?:{p})" for p, _ in FORMATS.values()) + ")$"

IDENTIFIER_HELP = (
    "The person's identifier, of the kind chosen above. Leave empty to process the queued requests "
    "(the nightly batch). " + "; ".join(rule for _, rule in FORMATS.values()) + ". "
    "It is kept only in erasure_requests until the request completes, and is never logged."
)
