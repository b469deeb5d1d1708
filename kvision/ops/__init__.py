"""Pure functions on tensors shared by every task (``keras.ops`` first): boxes, masks."""
