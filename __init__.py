"""gpuhours: simulate a training step of a large language model on a GPU cluster, and price the whole run."""

__version__ = "0.1.0"
