DROP TABLE wa_store_devices;
DROP TABLE wa_store_entries;
