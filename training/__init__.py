"""Offline training for SAOM: Ai2Thor collection, Real-to-Sim fine-tuning, evaluation, export."""
