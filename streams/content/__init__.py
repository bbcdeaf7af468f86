"""Templates and the limits every render runs under."""
