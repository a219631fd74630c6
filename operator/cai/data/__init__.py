"""Prompt sets shipped with the package and loaders for user prompt sources (see `prompts`)."""
