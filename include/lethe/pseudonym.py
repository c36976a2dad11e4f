"""Keyed pseudonyms (HMAC-SHA256): the only form in which an erased person is remembered.

A bare hash of an email can be reversed by hashing candidate emails; an HMAC
cannot without the key, which lives in the lethe_pseudonym_key connection.
"""

from __future__ import annotations

import hmac
import re

_UUID = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")


def normalise(kind: str, value: str) -> str:
    """One spelling per identifier, so the same person always gets the same pseudonym."""
    value = value.strip()
    if kind in ("email", "username"):
        return value.lower()
    if kind == "phone":
        return re.sub(r"[^0-9+]", "", value)
    if kind == "user_id":  # the subject key's value: an integer or a uuid in one spelling, any other type as text
        if re.fullmatch(r"[+-]?[0-9]+", value):
            return str(int(value))
        return value.lower() if _UUID.fullmatch(value) else value  # PostgreSQL writes a uuid lower-case
    raise ValueError(f"unknown identifier kind {kind!r}")


def pseudonym(key: bytes, kind: str, value: str | int) -> str:
    """HMAC-SHA256 of `kind:value`, hex."""
    message = f"{kind}:{normalise(kind, str(value))}".encode()
    return hmac.digest(key, message, "sha256").hex()  # one C call: the same digest as hmac.new(...).hexdigest()


def subject_pseudonym(key: bytes, user_id: int | str) -> str:
    """The pseudonym of a data subject, from the value of the policy's subject key (any type)."""
    return pseudonym(key, "user_id", user_id)


def folded_subject_pseudonym(key: bytes, folded: str) -> str:
    """The pseudonym of a case-insensitive (citext) subject key in its case-folded spelling: `folded` is the
    database's lower() of the key, the spelling citext compares by. A tombstone keeps it beside the pseudonym of
    the stored spelling, so a row spelling an erased key in any case is found hers (lethe.relations.key_folds_case).
    Its own kind, so it is never one of the identifier kinds the scanner signs."""
    return hmac.digest(key, f"user_id_folded:{folded}".encode(), "sha256").hex()


def subject_digest(key: bytes, user_id: int) -> bytes:
    """`subject_pseudonym` of an integer subject as its 32 bytes: the same message (`user_id:<decimal>`, which
    normalise gives an integer), without the text handling, for the export's million people."""
    return hmac.digest(key, b"user_id:%d" % user_id, "sha256")
