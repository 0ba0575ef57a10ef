-- The longest publish window any Kafka-mode API has run with. A rebuild waits this long for
-- the publishes started before Redis lost its state, whatever its own process (an API, or
-- `issuer-api rebuild-redis` with default settings) was configured with. It only grows: an
-- API with a longer PUBLISH_TIMEOUT_MS may still be running. An operator who is sure none
-- is can lower it by hand.
CREATE TABLE publish_window (
    only_row   BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    window_ms  BIGINT      NOT NULL CHECK (window_ms > 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
