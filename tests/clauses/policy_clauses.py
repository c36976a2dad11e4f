"""The enforceable clauses of the re:Skill privacy policy, in the policy's own words.

Every quote is checked verbatim against privacy-policy.txt (a copy of the published text) by
test_clause_coverage.py, so a clause cannot be paraphrased into saying something else.
"""

from __future__ import annotations

CLAUSES: dict[str, tuple[str, str]] = {
    # id: (where in the policy, the policy's own words)
    "tax-records": (
        "7. To Fulfil Legal Duties",
        "We may use and disclose your personal data where required by law, such as in keeping and disclosing our "
        "accounts, in keeping and disclosing our tax records",
    ),
    "retained-for-purpose": (
        "Data Retention",
        "Generally, the data is retained for as long as we need solely in order to achieve the purpose for which is "
        "was collected.",
    ),
    "account-removal": (
        "Data Retention",
        "If at any time you choose to cease using CodeOps Service, you may ask for your data to be removed from our "
        "servers",
    ),
    "objection": (
        "Why Do We Collect Your Personal Information",
        "You may object to the processing of your personal data for the purposes i) to v) at any time.",
    ),
    "marketing-consent": (
        "5. For Promoting Or Marketing Our Services",
        "With your consent or if permitted by applicable law, we may also use your contact details to send you "
        "commercial communications about our services.",
    ),
    "feedback-quotes": (
        "5. For Promoting Or Marketing Our Services",
        "we may ask you for feedback on our services, which you would be providing voluntarily. As permitted by "
        "applicable law, we may use this in the form of quotes",
    ),
    "usage-permitted": (
        "3. To Improve Our Offering Based On Your Usage",
        "However, collection of the data is done only if you permit the same.",
    ),
    "usage-not-named": (
        "3. To Improve Our Offering Based On Your Usage",
        "It is important to note that we do not associate this data with your name.",
    ),
    "cookies": (
        "Cookies And Other Similar Technologies",
        "Temporary cookies will be removed from your computer each time you close your browser.",
    ),
    "visitor-details": (
        "Visitor Details",
        "CodeOps uses the Internet Protocol address, device type, browser type, browser language, files accessed, "
        "referring URL, errors generated, operating system, time zone, and other visitor details collected in our "
        "log files to analyze trends, administer the website",
    ),
    "security": (
        "4. To Protect Us From Unlawful Usage Of The Services",
        "We may collect data which are required to protect us from any piracy, unlawful, or unauthorized use of our "
        "services",
    ),
    "evidence": (
        "6. For Internal Evidence",
        "We may collect data which are required to keep evidence of the following: us providing services to you, "
        "any communication between you and us, your use of our services, any payments or refunds, and any issues "
        "or disputes between you and us.",
    ),
    "litigation": (
        "Data Retention",
        "We may also keep the data to protect ourselves from damage in case of litigation in accordance with the "
        "current legislation.",
    ),
    "removal-record": (
        "Data Retention",
        "After the data removal, we may keep pseudonyms of your personal data solely for a record about the data "
        "removal.",
    ),
    "legal-obligations": (
        "Data Storage",
        "We may retain and use your Personal Information and data as necessary to comply with our legal "
        "obligations, resolve disputes, and enforce our rights.",
    ),
}
