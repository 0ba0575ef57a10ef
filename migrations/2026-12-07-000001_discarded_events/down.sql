UPDATE failed_events SET status = 'ABANDONED' WHERE status = 'DISCARDED';
ALTER TABLE failed_events DROP COLUMN resolved_by;
ALTER TABLE failed_events DROP CONSTRAINT failed_events_status_check;
ALTER TABLE failed_events ADD CONSTRAINT failed_events_status_check
    CHECK (status IN ('PENDING', 'RETRYING', 'RECOVERED', 'ABANDONED'));
