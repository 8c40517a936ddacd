"""bevforge.bench"""
