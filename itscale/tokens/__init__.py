"""itscale.tokens."""
