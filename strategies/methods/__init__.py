"""One module per method, each registering itself with `@register`; found by discovery
(`strategies/registry.py`): adding a module here is all it takes."""
