"""The appliance: offline fine-tuning and serving of small language models."""

__version__ = "0.1.0"
