-- An operator may set a failed event aside for good (DISCARDED: never retried, never
-- replayed by `--all`), and who resolved an event by hand (a discard, a replay) is kept.
ALTER TABLE failed_events DROP CONSTRAINT failed_events_status_check;
ALTER TABLE failed_events ADD CONSTRAINT failed_events_status_check
    CHECK (status IN ('PENDING', 'RETRYING', 'RECOVERED', 'ABANDONED', 'DISCARDED'));
ALTER TABLE failed_events ADD COLUMN resolved_by TEXT;
