"""attgmae.data"""
