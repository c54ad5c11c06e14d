"""The method's pure core: per-token losses, SLM's loss and the selection rules."""
