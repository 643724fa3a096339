DROP INDEX messages_media_idx;
DROP TABLE media;
