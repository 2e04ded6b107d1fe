"""attgmae.maps"""
