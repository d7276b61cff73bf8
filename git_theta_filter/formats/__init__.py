"""Model file formats, detected by content: bytes in, skeleton + tensor objects out."""
