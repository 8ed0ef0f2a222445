"""The prepare stage: read and hash raw data, validate it against its schema, split, version and publish it;
and the storage sensor that announces new raw files."""
