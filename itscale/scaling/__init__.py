"""itscale.scaling."""
