"""Model-function interfaces, analytic ground-truth models and networks."""

from itscale.models.gaussian_mixture import GaussianMixture
