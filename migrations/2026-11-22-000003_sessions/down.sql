DROP TABLE events;
ALTER TABLE tenants DROP COLUMN last_event_id;
DROP TABLE sessions;
