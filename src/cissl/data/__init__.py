"""Data: readers of the on-disk formats, the long-tailed split protocol, batched augmentation, streams."""
