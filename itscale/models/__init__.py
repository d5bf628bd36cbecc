"""Model-function interfaces, analytic ground-truth models and networks."""

from itscale.models.gaussian_mixture import GaussianMixture
from itscale.models.markov import MarkovLM, NGramLM
