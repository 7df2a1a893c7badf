"""Candidate generation, personalized re-scoring, optional cross-encoder, MMR."""
