DROP TABLE inbound_dead_letters;
