"""attgmae.store"""
