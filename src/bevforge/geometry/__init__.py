"""bevforge.geometry"""
