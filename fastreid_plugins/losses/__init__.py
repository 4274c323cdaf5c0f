"""Shared losses. FastReID's own ``cross_entropy_loss`` / ``triplet_loss`` are reused as they are."""
