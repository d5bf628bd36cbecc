"""itscale.search."""
