"""attgmae.models"""
