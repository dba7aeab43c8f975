"""The registered channels, one module each (found by discovery: `strategies/channel.py`)."""
