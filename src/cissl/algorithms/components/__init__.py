"""Reusable pieces of CISSL methods (logit adjustment, confidence masks, SeMi's components)."""
