"""itscale.hybrid."""
