DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
ALTER TABLE tenants DROP COLUMN send_rate_per_minute;
DROP TABLE chats;
DROP TABLE messages;
