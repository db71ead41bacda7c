"""cappuccino: deep-reinforcement-learning crypto portfolio trading."""

__version__ = "0.1.0"
