"""attgmae.eval"""
