DROP INDEX chats_created;
DROP TABLE card_activity;
DROP TABLE card_comments;
DROP TABLE cards;
DROP TABLE board_columns;
DROP TABLE boards;
