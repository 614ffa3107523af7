"""Complex-valued models: the building blocks (``models.complex``), architectures and checkpoints."""
