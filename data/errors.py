"""The one exception type of fedsqueeze.data."""


class DataError(ValueError):
    """Missing or invalid data, or an invalid data or partitioning option."""
