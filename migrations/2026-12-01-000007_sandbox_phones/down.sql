DROP TABLE sandbox_phones;
