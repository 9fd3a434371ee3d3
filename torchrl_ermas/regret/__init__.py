"""regret."""
