DROP TABLE publish_window;
