//! Anthropic stream translation (being written).
