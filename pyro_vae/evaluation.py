"""Evaluation of trained models: likelihood estimates, latent-space measures, and an
independent classifier for judging generated images.
"""
