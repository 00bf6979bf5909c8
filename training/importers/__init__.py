"""Checkpoints made by other code, turned into an ordinary dnd checkpoint.pt (`dnd import ...`)."""
