"""itscale.refine."""
