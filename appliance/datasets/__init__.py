"""Dataset intake: file readers, conversation shapes, validation, storage and statistics."""
