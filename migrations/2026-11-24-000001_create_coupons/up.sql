-- A coupon and its stock. `issued_count` is PostgreSQL's own count of rows in
-- coupon_issues, maintained by the worker in the same transaction as the inserts:
-- the CHECK makes the database the last guard against oversell even if Redis lost state.
CREATE TABLE coupons (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    total_quantity BIGINT      NOT NULL CHECK (total_quantity > 0),
    issued_count   BIGINT      NOT NULL DEFAULT 0,
    starts_at      TIMESTAMPTZ,
    ends_at        TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT coupons_issued_within_quantity CHECK (issued_count BETWEEN 0 AND total_quantity),
    CONSTRAINT coupons_window_ordered CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at)
);

-- One row per (coupon, user): the primary key is what makes redelivery harmless.
CREATE TABLE coupon_issues (
    coupon_id    BIGINT      NOT NULL REFERENCES coupons (id),
    user_id      BIGINT      NOT NULL CHECK (user_id > 0),
    event_id     UUID        NOT NULL,
    issued_at    TIMESTAMPTZ NOT NULL,
    persisted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (coupon_id, user_id)
);

CREATE INDEX coupon_issues_user_id ON coupon_issues (user_id);

-- Events the worker could not turn into a row, kept with their reason so that an
-- operator can see and re-drive them instead of the partition blocking or the event vanishing.
CREATE TABLE failed_events (
    id            BIGSERIAL PRIMARY KEY,
    reason        TEXT        NOT NULL,
    detail        TEXT        NOT NULL,
    source        TEXT        NOT NULL,
    coupon_id     BIGINT,
    user_id       BIGINT,
    payload       BYTEA       NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'PENDING'
                  CHECK (status IN ('PENDING', 'RETRYING', 'RECOVERED', 'ABANDONED')),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    next_retry_at TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX failed_events_status_next_retry ON failed_events (status, next_retry_at);

-- A redelivered poison event must not be recorded twice.
CREATE UNIQUE INDEX failed_events_source ON failed_events (source);
