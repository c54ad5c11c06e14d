"""A model over a TokenStore's windows: the LossStore (and its writer), embeddings."""
