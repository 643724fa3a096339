DROP TRIGGER events_notification_work ON events;
DROP FUNCTION notification_work_for_events();
DROP TABLE notification_work;
DROP TABLE notification_reads;
DROP TABLE notifications;
