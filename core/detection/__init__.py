"""Detection: faces of the target persons (the detect stage) and people in new photos (predict)."""
