-- Lantern Books: a small online bookshop's database, the second example Lethe runs on.
-- Shaped unlike re:Skill on purpose (docs/policy.md walks through its policy):
--   * the subject (customers) has a uuid key and points to a parent table (addresses);
--   * orders is partitioned by year, and its foreign keys are declared on each partition only;
--   * invoices live in schema `billing`, and link to the customer with a NOT NULL column the law keeps;
--   * `sessions` and `comments` exist with other shapes than re:Skill's tables of those names;
--   * consent is a log of (customer, topic) rows, and closing an account sets customers.closed_on.

CREATE SCHEMA IF NOT EXISTS billing;

CREATE TABLE addresses (
    address_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    line1        text NOT NULL,
    city         text NOT NULL,
    postcode     text NOT NULL,
    country      text NOT NULL DEFAULT 'NL',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    customer_id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email        text UNIQUE,
    phone        text,
    full_name    text,
    address_id   bigint REFERENCES addresses (address_id),
    signed_up_at timestamptz NOT NULL DEFAULT now(),
    closed_on    timestamptz
);

CREATE TABLE products (
    sku          text PRIMARY KEY,
    title        text NOT NULL,
    price_cents  integer NOT NULL
);

-- Partitioned by year; the foreign keys are declared on each partition, not on the parent.
CREATE TABLE orders (
    order_id     bigint NOT NULL,
    placed_at    timestamptz NOT NULL,
    customer_id  uuid NOT NULL,
    ship_to      bigint,
    total_cents  integer NOT NULL,
    PRIMARY KEY (order_id, placed_at)
) PARTITION BY RANGE (placed_at);

CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE orders_2026 PARTITION OF orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE orders_2027 PARTITION OF orders FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
ALTER TABLE orders_2024 ADD CONSTRAINT orders_2024_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (customer_id);
ALTER TABLE orders_2024 ADD CONSTRAINT orders_2024_ship_to_fk FOREIGN KEY (ship_to) REFERENCES addresses (address_id);
ALTER TABLE orders_2025 ADD CONSTRAINT orders_2025_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (customer_id);
ALTER TABLE orders_2025 ADD CONSTRAINT orders_2025_ship_to_fk FOREIGN KEY (ship_to) REFERENCES addresses (address_id);
ALTER TABLE orders_2026 ADD CONSTRAINT orders_2026_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (customer_id);
ALTER TABLE orders_2026 ADD CONSTRAINT orders_2026_ship_to_fk FOREIGN KEY (ship_to) REFERENCES addresses (address_id);
ALTER TABLE orders_2027 ADD CONSTRAINT orders_2027_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (customer_id);
ALTER TABLE orders_2027 ADD CONSTRAINT orders_2027_ship_to_fk FOREIGN KEY (ship_to) REFERENCES addresses (address_id);

-- Tax records, kept seven years; the customer link is NOT NULL.
CREATE TABLE billing.invoices (
    invoice_no     text PRIMARY KEY,
    customer_id    uuid NOT NULL REFERENCES customers (customer_id),
    billed_name    text NOT NULL,
    billed_address text NOT NULL,
    vat_number     text,
    amount_cents   integer NOT NULL,
    issued_at      timestamptz NOT NULL
);
CREATE INDEX invoices_customer_idx ON billing.invoices (customer_id);

-- A login session: a random token, not re:Skill's (session_id, cookie_id, kind, expires_at).
CREATE TABLE sessions (
    token        text PRIMARY KEY,
    customer_id  uuid REFERENCES customers (customer_id),
    ip           inet,
    user_agent   text,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);

-- Product reviews: not re:Skill's comments (comment_id, user_id, course, body).
CREATE TABLE comments (
    comment_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_sku  text NOT NULL REFERENCES products (sku),
    customer_id  uuid REFERENCES customers (customer_id),
    display_name text,
    body         text NOT NULL,
    posted_at    timestamptz NOT NULL
);

-- One row per customer and topic; revoking sets revoked_at.
CREATE TABLE consent_log (
    customer_id  uuid NOT NULL REFERENCES customers (customer_id),
    topic        text NOT NULL,
    given_at     timestamptz NOT NULL,
    revoked_at   timestamptz,
    PRIMARY KEY (customer_id, topic)
);

CREATE TABLE newsletter_subscribers (
    customer_id   uuid PRIMARY KEY REFERENCES customers (customer_id),
    email         text NOT NULL,
    subscribed_at timestamptz NOT NULL
);
