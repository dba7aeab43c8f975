"""The accelerated Flower layer (`--flower accelerated`, the default): every patch
of a Flower internal, the warm ClientApp worker and the patched entry points;
`--flower stock` runs none of it."""
