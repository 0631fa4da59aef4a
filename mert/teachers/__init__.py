"""Teachers: the targets MERT learns to predict."""
