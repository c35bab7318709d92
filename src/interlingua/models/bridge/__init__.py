"""The vocabulary bridge (DESIGN §8)."""
